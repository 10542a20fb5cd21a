"""`clonefleet power on|off|reset` and `status --live` as an operator meets them: arguments,
the --yes guard for nodes in the DNS map, output, JSON and exit codes. The provider is a
recording stand-in; what the drivers do is in tests/providers/*_contract.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from fleet_text import FSN, FleetNode, fleet_toml

from clonefleet.cli import _register, cli
from clonefleet.errors import ProviderError
from clonefleet.inventory import Node
from clonefleet.liveprobe import LiveStatus, PortProbe
from clonefleet.state import open_store

pytestmark = pytest.mark.unit

FLEET = fleet_toml("powertest", "power.clonefleet.test", [FSN],
                   [FleetNode("fsn-1", "fsn", "S-FSN1", ipv4="192.0.2.1"),
                    FleetNode("fsn-2", "fsn", "S-FSN2", ipv4="192.0.2.2")])

_register()


class RecordingProvider:
    """Records what it was asked; `failing` nodes fail with a ProviderError."""

    name = "lab"

    def __init__(self, calls: list[tuple[str, str]], failing: set[str], running: bool) -> None:
        self.calls, self.failing, self.running = calls, failing, running

    def _do(self, what: str, node: Node) -> None:
        self.calls.append((what, node.name))
        if node.name in self.failing:
            raise ProviderError(f"{node.name}: the provider refused {what}")

    def power_on(self, node: Node) -> bool:
        self._do("power_on", node)
        return not self.running

    def power_off(self, node: Node) -> None:
        self._do("power_off", node)

    def reset(self, node: Node) -> None:
        self._do("reset", node)


class Lab:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fleet = tmp_path / "fleet.toml"
        self.fleet.write_text(FLEET)
        self.state = tmp_path / "state"
        self.store = open_store(self.state / "powertest")
        self.calls: list[tuple[str, str]] = []
        self.failing: set[str] = set()
        self.running = False

        def factory(*args: Any) -> Callable[[Node], RecordingProvider]:
            return lambda node: RecordingProvider(self.calls, self.failing, self.running)

        monkeypatch.setattr("clonefleet.cli.power.provider_factory", factory)

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(cli, ["--fleet", str(self.fleet), *args],
                                  env={"CLONEFLEET_STATE_DIR": str(self.state)})


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lab:
    return Lab(tmp_path, monkeypatch)


@pytest.mark.parametrize("action", ["off", "reset"])
def test_cutting_a_node_active_in_the_dns_map_needs_yes_and_says_how_to_drain(
        lab: Lab, action: str) -> None:
    lab.store.set_state("fsn-1", "active", actor="test")

    refused = lab.run("power", action, "fsn-1")

    assert refused.exit_code == 2
    [line] = refused.output.strip().splitlines()
    assert line.startswith(f"error: power {action} fsn-1: active in the DNS map")
    assert "`clonefleet drain fsn-1`" in line and "--yes" in line
    assert lab.calls == []


def test_with_yes_an_active_node_is_powered_off_and_its_state_is_not_touched(lab: Lab) -> None:
    lab.store.set_state("fsn-1", "active", actor="test")

    result = lab.run("power", "off", "fsn-1", "--yes")

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "fsn-1: powered off"
    assert lab.calls == [("power_off", "fsn-1")]
    record = lab.store.get("fsn-1")
    assert record is not None and record.state == "active"
    assert len(lab.store.history("fsn-1")) == 1


def test_a_drained_node_is_cut_without_yes_and_progress_goes_to_stderr(lab: Lab) -> None:
    lab.store.set_state("fsn-1", "drained", actor="test")

    result = lab.run("power", "reset", "fsn-1")

    assert result.exit_code == 0, result.output
    assert lab.calls == [("reset", "fsn-1")]
    assert "fsn-1: power reset (lab)" in result.stderr
    assert "power reset" not in result.stdout


def test_power_on_says_whether_it_started_the_node(lab: Lab) -> None:
    started = lab.run("power", "on", "fsn-1")
    lab.running = True
    left = lab.run("power", "on", "fsn-1")

    assert started.exit_code == 0 and left.exit_code == 0
    assert started.stdout.startswith("fsn-1: powering on from disk")
    assert left.stdout.strip() == "fsn-1: already on: nothing to do"


def test_one_node_failing_exits_with_the_providers_code_in_one_line(lab: Lab) -> None:
    lab.failing.add("fsn-1")

    result = lab.run("power", "on", "fsn-1")

    assert result.exit_code == 4
    assert result.stderr.strip().splitlines()[-1] == \
        "error: fsn-1: the provider refused power_on"
    assert result.stdout == ""


def test_several_nodes_run_on_after_a_failure_and_json_names_the_failed(lab: Lab) -> None:
    lab.failing.add("fsn-2")

    result = lab.run("--json", "power", "on", "fsn-1", "fsn-2")

    assert result.exit_code == 30
    document = json.loads(result.stdout)
    assert document["failed"] == ["fsn-2"] and document["exit_code"] == 30
    assert [node["ok"] for node in document["nodes"]] == [True, False]
    assert lab.calls == [("power_on", "fsn-1"), ("power_on", "fsn-2")]


def test_all_nodes_failing_exits_31(lab: Lab) -> None:
    lab.failing.update({"fsn-1", "fsn-2"})
    result = lab.run("power", "on", "--all")
    assert result.exit_code == 31
    assert "power on failed on 2 of 2 nodes: fsn-1, fsn-2" in result.stderr


@pytest.mark.parametrize(("arguments", "expected"), [
    (("power", "halt", "fsn-1"), "'halt' is not one of 'on', 'off', 'reset'"),
    (("power", "on", "nosuch"), "nosuch"),
    (("power", "on"), "name the nodes, or pass --region REGION or --all"),
])
def test_user_mistakes_are_one_line_errors(lab: Lab, arguments: tuple[str, ...],
                                           expected: str) -> None:
    result = lab.run(*arguments)
    assert result.exit_code == 2
    assert expected in result.output and "Traceback" not in result.output
    assert lab.calls == []


def test_power_help_documents_the_exit_codes_and_each_providers_way(lab: Lab) -> None:
    text = " ".join(lab.run("power", "--help").output.split())
    for expected in ("Exit codes:", "30 several nodes: some failed", "hetzner-robot",
                     "no power-on or power-off call", "clonefleet drain NODE"):
        assert expected in text


def test_status_live_shows_the_probes_word_next_to_the_recorded_state(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    lab.store.set_state("fsn-1", "deployed", actor="test")
    probe = PortProbe("sshd", "192.0.2.1", 22, "silent")

    def probe_fleet(store: object, names: list[str], *args: Any, **options: Any
                    ) -> list[LiveStatus]:
        assert options == {"timeout": 2.0, "parallel": 3}
        return [LiveStatus(name, "off", "the provider says it is powered off", (probe,), "off")
                for name in names]

    monkeypatch.setattr("clonefleet.liveprobe.probe_fleet", probe_fleet)

    table = lab.run("status", "--live", "--timeout", "2", "--parallel", "3")
    document = lab.run("--json", "status", "--live", "--timeout", "2", "--parallel", "3")

    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NODE", "REGION", "PROVIDER", "STATE", "LIVE", "SINCE",
                                "REASON", "DETAIL"]
    assert lines[1].split()[:5] == ["fsn-1", "fsn", "lab", "deployed", "off"]
    rows = {row["node"]: row for row in json.loads(document.stdout)}
    assert rows["fsn-1"]["state"] == "deployed" and rows["fsn-1"]["live"]["live"] == "off"
    assert rows["fsn-1"]["live"]["probes"][0]["answer"] == "silent"


def test_status_without_live_probes_nothing(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    def probe_fleet(*args: Any, **options: Any) -> list[LiveStatus]:
        raise AssertionError("probed without --live")

    monkeypatch.setattr("clonefleet.liveprobe.probe_fleet", probe_fleet)
    result = lab.run("--json", "status")
    assert result.exit_code == 0 and "live" not in json.loads(result.stdout)[0]
