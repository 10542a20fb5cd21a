"""The DNS commands' refusals and exit codes, without DNS servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from clonefleet.cli import _register, cli
from clonefleet.state import open_store

pytestmark = pytest.mark.unit

FLEET = """
[fleet]
name = "clitest"
domain = "cli.clonefleet.test"

[[routed]]
name = "edge"

[regions.fsn]
provider = "lab"
latitude = 50.47
longitude = 12.37

[nodes.fsn-1]
region = "fsn"
disks = ["C-FSN1"]
ipv4 = "192.0.2.11"

[nodes.fsn-2]
region = "fsn"
disks = ["C-FSN2"]
ipv4 = "192.0.2.12"
"""

_register()


@pytest.fixture
def fleet_path(tmp_path: Path) -> Path:
    path = tmp_path / "clitest.toml"
    path.write_text(FLEET)
    store = open_store(tmp_path / "state" / "clitest")
    for node in ("fsn-1", "fsn-2"):
        store.transition(node, "active", actor="test")
    store.close()
    return path


def run(fleet_path: Path, *arguments: str) -> Result:
    return CliRunner().invoke(cli, ["--fleet", str(fleet_path), *arguments],
                              env={"CLONEFLEET_STATE_DIR": str(fleet_path.parent / "state")})


def state_of(fleet_path: Path, node: str) -> str:
    record = open_store(fleet_path.parent / "state" / "clitest").get(node)
    assert record is not None
    return record.state


def test_drain_without_reason_exits_21_with_one_error_line(fleet_path: Path) -> None:
    result = run(fleet_path, "drain", "fsn-1")
    assert result.exit_code == 21
    assert result.stderr == ("error: drain of 'fsn-1' refused: a drain needs a reason; "
                             "pass --reason TEXT\n")
    assert state_of(fleet_path, "fsn-1") == "active"


def test_drain_of_the_regions_last_active_node_exits_21_and_force_drains_it(
        fleet_path: Path) -> None:
    assert run(fleet_path, "drain", "fsn-1", "--reason", "one").exit_code == 0
    refused = run(fleet_path, "drain", "fsn-2", "--reason", "two")
    assert refused.exit_code == 21 and "min_active = 1" in refused.stderr
    forced = run(fleet_path, "--json", "drain", "fsn-2", "--reason", "two", "--force")
    assert forced.exit_code == 0
    assert json.loads(forced.stdout)["state"] == "draining"


def test_dry_run_drain_reports_the_plan_and_changes_nothing(fleet_path: Path) -> None:
    result = run(fleet_path, "--json", "drain", "fsn-1", "--reason", "x", "--dry-run")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["active_after"] == 1
    assert state_of(fleet_path, "fsn-1") == "active"


def test_undrain_after_failed_health_check_exits_21(fleet_path: Path) -> None:
    assert run(fleet_path, "drain", "fsn-1", "--reason", "disk").exit_code == 0
    assert run(fleet_path, "dns", "health", "fsn-1", "--failed", "--detail", "smart").exit_code \
        == 0
    refused = run(fleet_path, "undrain", "fsn-1")
    assert refused.exit_code == 21 and "last health check failed" in refused.stderr
    assert state_of(fleet_path, "fsn-1") == "draining"


def test_verify_with_no_dns_server_to_check_exits_20(fleet_path: Path) -> None:
    result = run(fleet_path, "dns", "verify")
    assert result.exit_code == 20
    assert "no DNS server was checked" in result.stderr


def test_drain_of_an_unknown_node_exits_2(fleet_path: Path) -> None:
    result = run(fleet_path, "drain", "nope", "--reason", "x")
    assert result.exit_code == 2 and "unknown node 'nope'" in result.stderr
