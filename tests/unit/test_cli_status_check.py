"""`clonefleet status` and `clonefleet check` as an operator meets them."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from fleet_text import FSN, FleetNode, fleet_toml

from clonefleet.cli import _register, cli
from clonefleet.state import open_store

pytestmark = pytest.mark.unit


_register()


def run(tmp_path: Path, *args: str, min_active: int = 1):  # type: ignore[no-untyped-def]
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(fleet_toml(
        "statustest", "status.clonefleet.test", [replace(FSN, min_active=min_active)],
        [FleetNode("fsn-1", "fsn", "S-FSN1"), FleetNode("fsn-2", "fsn", "S-FSN2")]))
    return CliRunner().invoke(cli, ["--fleet", str(fleet), *args],
                              env={"CLONEFLEET_STATE_DIR": str(tmp_path / "state")})


def test_nodes_never_provisioned_are_shown_as_such_not_as_ordered(tmp_path: Path) -> None:
    store = open_store(tmp_path / "state" / "statustest")
    store.set_state("fsn-2", "ordered", actor="test", reason="lab server lab-fsn-2")
    rows = {row["node"]: row for row in json.loads(run(tmp_path, "--json", "status").output)}
    assert rows["fsn-1"]["state"] is None and rows["fsn-1"]["provisioned"] is False
    assert rows["fsn-2"]["state"] == "ordered" and rows["fsn-2"]["provisioned"] is True

    table = run(tmp_path, "status").output.splitlines()
    fsn1 = next(line for line in table if line.startswith("fsn-1"))
    fsn2 = next(line for line in table if line.startswith("fsn-2"))
    assert "not provisioned" in fsn1 and "ordered" not in fsn1
    assert "ordered" in fsn2


def test_check_refuses_a_region_floor_no_drain_could_meet(tmp_path: Path) -> None:
    result = run(tmp_path, "check", min_active=5)
    assert result.exit_code == 2
    assert result.output.startswith("error: ")
    assert "regions.fsn.min_active: 5 is more than the region's 2 nodes" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert run(tmp_path, "check", min_active=2).exit_code == 0


def test_library_loggers_are_quiet_unless_verbose() -> None:
    # In a fresh interpreter: pytest's own log handlers would hide Python's last-resort one.
    script = ("import logging, sys\n"
              "from clonefleet.cli import configure_logging\n"
              "if sys.argv[1] != 'unconfigured': configure_logging(int(sys.argv[1]))\n"
              "logging.getLogger('paramiko.transport').error('Exception (client): banner')\n"
              "logging.getLogger('pyinfra.api').error('pyinfra says')\n")
    def stderr(mode: str) -> str:
        return subprocess.run([sys.executable, "-c", script, mode], capture_output=True,
                              text=True, check=True).stderr
    assert "Exception (client)" in stderr("unconfigured")  # what users saw before
    assert stderr("0") == ""
    verbose = stderr("1")
    assert "paramiko.transport: Exception (client): banner" in verbose
    assert "pyinfra.api: pyinfra says" in verbose
