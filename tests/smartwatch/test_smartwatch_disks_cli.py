"""`clonefleet disks` output and exit code when nodes cannot be asked (no network needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from clonefleet.cli import _register, cli
from clonefleet.disks import NodeDisks, rows

pytestmark = pytest.mark.unit

FLEET = """
[fleet]
name = "diskcli"
domain = "diskcli.clonefleet.test"

[regions.fsn]
provider = "lab"
latitude = 50.47
longitude = 12.37

[nodes.fsn-1]
region = "fsn"
disks = ["A"]
"""


def test_nodes_never_installed_are_listed_unreachable_and_exit_1(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "diskcli.toml").write_text(FLEET)
    monkeypatch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "state"))
    _register()
    result = CliRunner().invoke(cli, ["--fleet", str(tmp_path / "diskcli.toml"), "disks"])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].startswith("STATUS")
    assert lines[1].startswith("unreachable fsn-1")
    assert "no SSH address recorded" in lines[1]
    assert lines[-1] == "error: 1 node(s) could not be asked: fsn-1"


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
