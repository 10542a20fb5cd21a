"""The DNS commands' refusals and exit codes, without DNS servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from fleet_text import FSN, FleetNode, fleet_toml

from clonefleet.cli import _register, cli
from clonefleet.state import open_store

pytestmark = pytest.mark.unit


def fleet_text(routed_name: str = "edge") -> str:
    return fleet_toml("clitest", "cli.clonefleet.test", [FSN],
                      [FleetNode("fsn-1", "fsn", "C-FSN1", ipv4="192.0.2.11"),
                       FleetNode("fsn-2", "fsn", "C-FSN2", ipv4="192.0.2.12")],
                      routed=[{"name": routed_name}])


_register()


@pytest.fixture
def fleet_path(tmp_path: Path) -> Path:
    path = tmp_path / "clitest.toml"
    path.write_text(fleet_text())
    store = open_store(tmp_path / "state" / "clitest")
    for node in ("fsn-1", "fsn-2"):
        store.set_state(node, "active", actor="test")
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


@pytest.mark.parametrize(("network", "named"), [
    ("203.0.113.0/24=95,10", "latitude 95 is off the globe"),
    ("203.0.113.0/24=52.5,181", "longitude 181 is off the globe"),
    ("203.0.113.0/33=52.5,13.4", "'203.0.113.0/33' is not a network"),
    ("berlin=52.5,13.4", "'berlin' is not a network"),
    ("203.0.113.0/24=52.5", "expected CIDR=LAT,LON"),
    ("203.0.113.0/24=north,east", "must be numbers"),
])
def test_geoip_refuses_a_bad_network_or_coordinates_with_exit_2(
        fleet_path: Path, network: str, named: str) -> None:
    target = fleet_path.parent / "nodes.mmdb"
    result = run(fleet_path, "dns", "geoip", str(target), "--network", network)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: --network {network!r}: ")
    assert named in result.stderr and result.stderr.count("\n") == 1
    assert not target.exists()


@pytest.mark.parametrize("arguments", [
    ("drain", "fsn-1", "--reason", "x", "--timeout", "0"),
    ("drain", "fsn-1", "--reason", "x", "--timeout", "-5"),
    ("drain", "fsn-1", "--reason", "x", "--server-timeout", "0"),
    ("undrain", "fsn-1", "--timeout", "-1"),
])
def test_zero_or_negative_timeouts_are_refused_with_exit_2_before_any_change(
        fleet_path: Path, arguments: tuple[str, ...]) -> None:
    result = run(fleet_path, *arguments)
    assert result.exit_code == 2
    assert "timeout must be more than 0 seconds" in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert state_of(fleet_path, "fsn-1") == "active"


@pytest.mark.parametrize("command", [("dns", "verify"), ("dns", "publish")])
def test_zero_timeouts_for_verify_and_publish_are_refused_with_exit_2(
        fleet_path: Path, command: tuple[str, ...]) -> None:
    result = run(fleet_path, *command, "--timeout", "0")
    assert result.exit_code == 2 and "must be more than 0 seconds" in result.stderr


def test_with_json_a_refused_drain_prints_a_json_object_and_the_error_line(
        fleet_path: Path) -> None:
    result = run(fleet_path, "--json", "drain", "fsn-1")
    assert result.exit_code == 21
    assert json.loads(result.stdout) == {
        "error": "drain of 'fsn-1' refused: a drain needs a reason; pass --reason TEXT",
        "exit_code": 21, "kind": "DrainRefused"}
    assert result.stderr == ("error: drain of 'fsn-1' refused: a drain needs a reason; "
                             "pass --reason TEXT\n")


@pytest.mark.parametrize(("arguments", "code"), [
    (("drain", "nope", "--reason", "x"), 2),
    (("dns", "verify"), 20),
    (("dns", "geoip", "x.mmdb", "--network", "bad"), 2),
    (("drain", "fsn-1", "--reason", "x", "--timeout", "abc"), 2),
])
def test_with_json_every_error_prints_a_json_object(
        fleet_path: Path, arguments: tuple[str, ...], code: int) -> None:
    result = run(fleet_path, "--json", *arguments)
    assert result.exit_code == code
    error = json.loads(result.stdout)
    assert error["exit_code"] == code and error["error"]


def test_check_refuses_a_routed_name_equal_to_a_node_name_with_exit_2(
        fleet_path: Path) -> None:
    fleet_path.write_text(fleet_text(routed_name="fsn-2"))
    result = run(fleet_path, "check")
    assert result.exit_code == 2
    assert "routed[0].name: routed name 'fsn-2' is also a node's host name " \
           "(fsn-2.cli.clonefleet.test); rename the routed name" in result.stderr
