"""`status --live` and `keys repin` against real SSH servers on loopback: OpenSSH's sshd
(tests/sshd_fixture.py) for `sshd`, the Dropbear of tests/dropbear_fixture.py for
`initramfs`, a server with another key for `host-key-mismatch`, a closed port for
`unreachable`/`off`. Keys are compared through the fleet's known_hosts, written from the
store's pins, as unlock and deploy do."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from dropbear_fixture import Dropbear, dropbear_available, running_dropbear
from sshd_fixture import Sshd, sshd_fleet

from clonefleet import nodefacts
from clonefleet.cli import _register, cli
from clonefleet.errors import ProviderError, StateError
from clonefleet.known_hosts import KnownHosts, fleet_known_hosts, public_key_blob
from clonefleet.liveprobe import probe_fleet
from clonefleet.providers.base import ServerInfo, SshAccess
from clonefleet.repin import apply_repin, plan_repin
from clonefleet.ssh import ConnectionFailed, RemoteShell, generate_ed25519
from clonefleet.state import SqliteStateStore, open_store

pytestmark = pytest.mark.integration

_register()


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Fleet:
    """A lab fleet (fsn-1) whose state records the addresses and pins a test chooses."""

    def __init__(self, folder: Path, sshd: Sshd) -> None:
        self.path = sshd_fleet(folder, sshd, "livetest")
        self.state_dir = folder / "state" / "livetest"
        self.store: SqliteStateStore = open_store(self.state_dir)
        self.known_hosts: KnownHosts = fleet_known_hosts(self.state_dir)
        self.sshd = sshd

    def record(self, ssh_port: int, unlock_port: int, *, ssh_key: str | None,
               dropbear_key: str, state: str = "active") -> None:
        self.store.set_state("fsn-1", state, actor="test")
        nodefacts.record_server(self.store, "fsn-1", ServerInfo(
            node="fsn-1", server_id="lab-fsn-1", status="disk",
            ssh=SshAccess("127.0.0.1", ssh_port), unlock=SshAccess("127.0.0.1", unlock_port)))
        if ssh_key is not None:  # None: not installed yet, nothing pinned
            nodefacts.record_host_keys(self.store, "fsn-1", ssh_host_key=ssh_key,
                                       dropbear_host_key=dropbear_key)

    def live(self, provider_says: str = "disk") -> dict[str, object]:
        [found] = probe_fleet(self.store, ["fsn-1"], self.known_hosts,
                              lambda node: provider_says, timeout=3)
        return found.as_dict()


@pytest.fixture
def fleet(tmp_path: Path, sshd: Sshd, monkeypatch: pytest.MonkeyPatch) -> Fleet:
    monkeypatch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "state"))
    return Fleet(tmp_path, sshd)


@pytest.fixture
def dropbear(tmp_path: Path) -> Iterator[Dropbear]:
    if not dropbear_available():
        pytest.fail("dropbear is missing; run scripts/setup (package dropbear-bin)")
    with running_dropbear(tmp_path / "dropbear") as server:
        yield server


def other_key() -> str:
    return generate_ed25519("someone-else").public_line


def test_a_node_whose_sshd_answers_with_the_pinned_key_is_sshd(fleet: Fleet) -> None:
    fleet.record(fleet.sshd.port, closed_port(), ssh_key=fleet.sshd.host_key,
                 dropbear_key=other_key())

    found = fleet.live(provider_says="this provider must not be asked")

    assert found["live"] == "sshd" and found["provider_status"] == ""
    assert f"127.0.0.1:{fleet.sshd.port}" in str(found["detail"])


def test_a_node_whose_dropbear_answers_with_the_pinned_key_waits_in_its_initramfs(
        fleet: Fleet, dropbear: Dropbear) -> None:
    fleet.record(closed_port(), dropbear.port, ssh_key=fleet.sshd.host_key,
                 dropbear_key=dropbear.host_key)

    found = fleet.live()

    assert found["live"] == "initramfs" and "waiting for unlock" in str(found["detail"])
    # Only the key exchange: every connection left before authenticating.
    log = dropbear.log().lower()
    assert "exit before auth" in log and "auth succeeded" not in log and "attempt" not in log


def test_a_port_answering_with_another_key_is_a_mismatch_and_is_sent_nothing(
        fleet: Fleet) -> None:
    pinned = other_key()
    fleet.record(fleet.sshd.port, closed_port(), ssh_key=pinned, dropbear_key=other_key())

    found = fleet.live()

    assert found["live"] == "host-key-mismatch"
    assert "clonefleet keys repin fsn-1" in str(found["detail"])
    [sshd_probe, dropbear_probe] = found["probes"]  # type: ignore[misc]
    assert sshd_probe["answer"] == "other-key" and dropbear_probe["answer"] == "silent"
    log = (fleet.sshd.client_key.parent / "sshd.log").read_text()
    assert "publickey" not in log and "Accepted" not in log and "Failed" not in log


def test_a_node_where_nothing_answers_is_off_or_unreachable_as_the_provider_says(
        fleet: Fleet) -> None:
    fleet.record(closed_port(), closed_port(), ssh_key=fleet.sshd.host_key,
                 dropbear_key=other_key())

    assert fleet.live(provider_says="off")["live"] == "off"
    on = fleet.live(provider_says="disk")
    assert on["live"] == "unreachable" and on["provider_status"] == "disk"

    def failing(node: str) -> str:
        raise ProviderError("HCLOUD_TOKEN is not set")

    [asked] = probe_fleet(fleet.store, ["fsn-1"], fleet.known_hosts, failing, timeout=3)
    assert asked.live == "unreachable" and "cannot be asked" in asked.detail
    assert "HCLOUD_TOKEN" in asked.detail


def test_status_live_prints_the_live_column_and_json(fleet: Fleet, tmp_path: Path) -> None:
    fleet.record(fleet.sshd.port, closed_port(), ssh_key=fleet.sshd.host_key,
                 dropbear_key=other_key())
    env = {"CLONEFLEET_STATE_DIR": str(tmp_path / "state")}

    table = CliRunner().invoke(cli, ["--fleet", str(fleet.path), "status", "--live",
                                     "--timeout", "3"], env=env)
    as_json = CliRunner().invoke(cli, ["--fleet", str(fleet.path), "--json", "status",
                                       "--live", "--timeout", "3"], env=env)

    assert table.exit_code == 0, table.output
    header, row = table.output.splitlines()[:2]
    assert header.split()[:5] == ["NODE", "REGION", "PROVIDER", "STATE", "LIVE"]
    assert row.split()[:5] == ["fsn-1", "fsn", "lab", "active", "sshd"]
    [node] = json.loads(as_json.output)
    assert node["state"] == "active" and node["live"]["live"] == "sshd"


def test_repin_after_a_mismatch_pins_the_presented_key_and_connections_work_again(
        fleet: Fleet) -> None:
    fleet.record(fleet.sshd.port, closed_port(), ssh_key=other_key(), dropbear_key=other_key())
    assert fleet.live()["live"] == "host-key-mismatch"

    plan = plan_repin(fleet.store, "fsn-1", fleet.known_hosts, timeout=3)
    [change] = plan.changes
    assert change.role == "sshd" and change.presented == public_key_blob(fleet.sshd.host_key)
    apply_repin(fleet.store, fleet.known_hosts, plan)

    assert fleet.live()["live"] == "sshd"
    assert nodefacts.load(fleet.store, "fsn-1").ssh_host_key == change.presented
    assert fleet.known_hosts.keys_for("127.0.0.1", fleet.sshd.port) == [change.presented]
    with RemoteShell(SshAccess("127.0.0.1", fleet.sshd.port), fleet.sshd.client_key,
                     known_hosts=fleet.known_hosts.path, what="fsn-1 sshd",
                     timeout=10) as shell:
        assert shell.run("echo repinned")[1].strip() == "repinned"


def test_repin_without_yes_off_a_terminal_changes_nothing_and_with_yes_pins(
        fleet: Fleet, tmp_path: Path) -> None:
    wrong = other_key()
    fleet.record(fleet.sshd.port, closed_port(), ssh_key=wrong, dropbear_key=other_key())
    env = {"CLONEFLEET_STATE_DIR": str(tmp_path / "state")}
    arguments = ["--fleet", str(fleet.path), "keys", "repin", "fsn-1", "--timeout", "3"]

    refused = CliRunner().invoke(cli, arguments, env=env)

    assert refused.exit_code == 2
    assert refused.output.splitlines()[-1].startswith("error: fsn-1: 1 key(s) changed")
    assert "CHANGED" in refused.output
    assert nodefacts.load(fleet.store, "fsn-1").ssh_host_key == wrong

    pinned = CliRunner().invoke(cli, [*arguments, "--yes"], env=env)

    assert pinned.exit_code == 0, pinned.output
    assert "fsn-1: re-pinned sshd" in pinned.output
    assert nodefacts.load(fleet.store, "fsn-1").ssh_host_key == \
        public_key_blob(fleet.sshd.host_key)
    again = CliRunner().invoke(cli, ["--fleet", str(fleet.path), "--json", "keys", "repin",
                                     "fsn-1", "--timeout", "3"], env=env)
    assert json.loads(again.output)["changes"] == 0


def test_repin_of_a_node_where_nothing_answers_says_to_power_it_on(fleet: Fleet) -> None:
    fleet.record(closed_port(), closed_port(), ssh_key=other_key(), dropbear_key=other_key())

    with pytest.raises(ConnectionFailed) as caught:
        plan_repin(fleet.store, "fsn-1", fleet.known_hosts, timeout=2)

    assert "clonefleet power on fsn-1" in str(caught.value)


def test_the_mismatch_error_of_a_connection_names_keys_repin(fleet: Fleet) -> None:
    fleet.record(fleet.sshd.port, closed_port(), ssh_key=other_key(), dropbear_key=other_key())
    facts = nodefacts.load_pinned(fleet.store, "fsn-1", fleet.known_hosts)

    with pytest.raises(Exception) as caught:
        RemoteShell(facts.require_ssh(), fleet.sshd.client_key,
                    known_hosts=fleet.known_hosts.path, what="fsn-1 sshd", timeout=10)

    assert "clonefleet keys repin fsn-1" in str(caught.value)
    assert "provision --wipe" not in str(caught.value)


def test_a_node_not_installed_yet_is_unpinned_and_cannot_be_repinned(fleet: Fleet) -> None:
    # In its provider's rescue system: something answers, nothing is pinned to compare with.
    fleet.record(fleet.sshd.port, closed_port(), ssh_key=None, dropbear_key="", state="rescue")

    found = fleet.live()

    assert found["live"] == "unpinned"
    with pytest.raises(StateError) as caught:
        plan_repin(fleet.store, "fsn-1", fleet.known_hosts, timeout=3)
    assert "clonefleet provision fsn-1" in str(caught.value)
    assert nodefacts.load(fleet.store, "fsn-1").ssh_host_key is None


@pytest.mark.parametrize(("answer", "exit_code"), [("y\n", 0), ("n\n", 2)])
def test_repin_on_a_terminal_asks_and_pins_only_when_confirmed(
        fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: str,
        exit_code: int) -> None:
    wrong = other_key()
    fleet.record(fleet.sshd.port, closed_port(), ssh_key=wrong, dropbear_key=other_key())
    monkeypatch.setattr("clonefleet.cli.keys._on_terminal", lambda: True)

    result = CliRunner().invoke(cli, ["--fleet", str(fleet.path), "keys", "repin", "fsn-1",
                                      "--timeout", "3"], input=answer,
                                env={"CLONEFLEET_STATE_DIR": str(tmp_path / "state")})

    assert result.exit_code == exit_code, result.output
    assert "Pin the presented key(s) for fsn-1?" in result.output
    pinned = nodefacts.load(fleet.store, "fsn-1").ssh_host_key
    assert pinned == (public_key_blob(fleet.sshd.host_key) if exit_code == 0 else wrong)
