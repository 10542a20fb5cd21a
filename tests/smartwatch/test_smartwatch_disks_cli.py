"""`clonefleet disks` output and exit code when nodes cannot be asked (no network needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from fleet_text import FSN, FleetNode, fleet_toml

from clonefleet.cli import _register, cli
from clonefleet.disks import NodeDisks, rows

pytestmark = pytest.mark.unit

FLEET = fleet_toml("diskcli", "diskcli.clonefleet.test", [FSN], [FleetNode("fsn-1", "fsn", "A")])


def test_never_provisioned_nodes_are_listed_as_such_and_exit_0(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "diskcli.toml").write_text(FLEET)
    monkeypatch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "state"))
    _register()
    result = CliRunner().invoke(cli, ["--fleet", str(tmp_path / "diskcli.toml"), "disks"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("STATUS")
    assert lines[1].split()[:2] == ["not-provisioned", "fsn-1"]
    assert lines[1].endswith("never provisioned: run `clonefleet provision fsn-1`")
    assert len(lines) == 2


def test_deployed_node_without_an_ssh_address_is_unreachable_and_exits_1(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clonefleet.state import open_store

    (tmp_path / "diskcli.toml").write_text(FLEET)
    monkeypatch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "state"))
    open_store(tmp_path / "state" / "diskcli").set_state("fsn-1", "deployed", actor="test")
    _register()
    result = CliRunner().invoke(cli, ["--fleet", str(tmp_path / "diskcli.toml"), "disks"])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[1].split()[:2] == ["unreachable", "fsn-1"]
    assert "no SSH address recorded although the node is deployed" in lines[1]
    assert lines[-1] == "error: 1 node(s) could not be asked: fsn-1"


def test_a_node_watching_no_disk_gets_its_own_warning_row() -> None:
    finding = {"severity": "warning", "check": "no_smart_disk",
               "reason": "no SMART-capable disk: smartctl found none (block devices: vda)"}
    reports = [NodeDisks("a-1", "warning", [], [], [finding]),
               NodeDisks("b-1", "ok", [{"device": "/dev/sda", "status": "ok", "model": "M",
                                        "serial": "S", "findings": []}])]
    assert [(row["status"], row["node"], row["findings"]) for row in rows(reports)] == [
        ("warning", "a-1", [finding["reason"]]), ("ok", "b-1", [])]


def test_rows_put_critical_disks_first_then_unreachable_nodes_then_warnings() -> None:
    disk = {"device": "/dev/sda", "model": "M", "serial": "S", "temperature": 30,
            "power_on_hours": 1, "findings": []}
    reports = [
        NodeDisks("a-1", "ok", [dict(disk, status="ok")]),
        NodeDisks("b-1", "warning", [dict(disk, status="warning",
                                          findings=[{"reason": "grew"}])]),
        NodeDisks("c-1", "unreachable", error="timeout"),
        NodeDisks("d-1", "critical", [dict(disk, status="critical",
                                           findings=[{"reason": "FAILED"}])],
                  arrays=[{"name": "md0", "level": "raid1", "degraded": True, "map": "U_"}]),
    ]
    assert [(row["status"], row["node"], row["device"]) for row in rows(reports)] == [
        ("critical", "d-1", "/dev/sda"), ("unreachable", "c-1", ""),
        ("warning", "b-1", "/dev/sda"), ("warning", "d-1", "/dev/md0"), ("ok", "a-1", "/dev/sda")]
