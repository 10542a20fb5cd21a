"""The recovery key a provision installed: in its report, its --json, and printed once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from many_nodes_fleet import LAB_NODES, environment, state_store, write_fleet

from clonefleet.cli import _register, cli
from clonefleet.cli.provision import _print_recovery_keys
from clonefleet.errors import ProviderError
from clonefleet.fleetrun import FleetResult, FleetRun, NodeOutcome, report_as_dict
from clonefleet.inventory import Node, load_fleet
from clonefleet.provision import Provisioner, ProvisionReport, recovery_key_of

pytestmark = pytest.mark.unit

KEY = "ABCDE-FGHJK-MNPQR-STVWX-YZ012-34567-89ABC-DEFGH"


def test_the_report_carries_the_key_only_when_this_run_installed_the_node() -> None:
    installed = ProvisionReport(node="fsn-1", final_state="deployed", recovery_key=KEY)
    resumed = ProvisionReport(node="fsn-2", final_state="deployed")

    assert report_as_dict(installed)["recovery_key"] == KEY
    assert "recovery_key" not in report_as_dict(resumed)
    assert KEY not in repr(installed)  # never in a log line that prints the report
    fleet = FleetResult([NodeOutcome("fsn-1", "deployed", 1.0, report=installed),
                         NodeOutcome("fsn-2", "deployed", 1.0, report=resumed)], 2, 1.0)
    assert [node.get("recovery_key") for node in fleet.as_dict()["nodes"]] == [KEY, None]


def test_the_key_is_printed_labelled_with_the_instruction_to_store_it_offline(
        capsys: pytest.CaptureFixture[str]) -> None:
    _print_recovery_keys([("fsn-1", KEY), ("fsn-2", "")])

    out = capsys.readouterr().out
    assert "fsn-1: LUKS RECOVERY KEY" in out and KEY in out
    assert "Store it offline" in out and "clonefleet keys recovery fsn-1 --new" in out
    assert "fsn-2" not in out


def install_then_fail_to_boot(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real Provisioner with its install stood in for (it needs a rescue system): the
    install makes the key KEY, then booting from disk fails."""

    def install(self: Provisioner, target: Node, report: ProvisionReport) -> None:
        report.recovery_key = KEY

    def boot(self: Provisioner, target: Node) -> None:
        raise ProviderError(f"{target.name} did not boot from its disk (test)")

    monkeypatch.setattr(Provisioner, "_install", install)
    monkeypatch.setattr(Provisioner, "_boot_disk", boot)


def test_a_run_failing_after_the_install_still_returns_the_recovery_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the Python API: FleetRun over a node recorded deployed (hence wipe=True); the
    key the install made is in the node's outcome, its error and its dict. The next test is
    the same failure seen through the command."""
    monkeypatch.setenv("CLONEFLEET_AGE_KEY", str(tmp_path / "age.key"))
    monkeypatch.setenv("CLONEFLEET_CACHE_DIR", str(tmp_path / "cache"))
    fleet = load_fleet(write_fleet(tmp_path))
    store = state_store(tmp_path)
    node = LAB_NODES[0]
    install_then_fail_to_boot(monkeypatch)
    result = FleetRun(fleet, store, tmp_path / "state" / fleet.name).provision([node], wipe=True)

    [outcome] = result.outcomes
    assert not outcome.ok and outcome.failed_step == "boot from disk"
    assert outcome.recovery_key == KEY and recovery_key_of(outcome.error) == KEY
    assert outcome.as_dict()["recovery_key"] == KEY


@pytest.mark.parametrize("as_json", [False, True])
def test_provision_of_one_node_failing_after_the_install_prints_the_key_with_its_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_json: bool) -> None:
    """Through the command (`clonefleet provision NODE --wipe`, plain and --json): the
    failure of the test above, as the operator sees it: its exit code, the error, and the
    key printed next to it or in the JSON document."""
    fleet_path = write_fleet(tmp_path)
    node = LAB_NODES[0]
    install_then_fail_to_boot(monkeypatch)
    _register()
    result = CliRunner().invoke(
        cli, ["--fleet", str(fleet_path), *(["--json"] if as_json else []), "provision", node,
              "--wipe"], env=environment(tmp_path))

    assert result.exit_code == ProviderError.exit_code, result.output
    if as_json:
        document = json.loads(result.stdout)
        assert document["recovery_key"] == KEY and "did not boot" in document["error"]
    else:
        assert f"{node}: LUKS RECOVERY KEY" in result.stdout and KEY in result.stdout
        assert "did not boot from its disk" in result.output
