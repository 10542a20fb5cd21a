"""`clonefleet provision NODE... | --region R | --all` through the real command in a
subprocess (output not on a terminal). No VM: lab nodes are recorded as deployed, Hetzner
Cloud nodes fail at their first step for real reasons (an unset token variable; a local API
fake refusing the token)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from many_nodes_fleet import CLOUD_NODES, LAB_NODES, UNSET_TOKEN, clonefleet, write_fleet

from clonefleet.fakes.hcloud import HcloudFake, make_server
from clonefleet.fakes.machines import RecordingMachines

pytestmark = pytest.mark.unit

SINGLE_NODE_KEYS = {"node", "state", "steps", "skipped", "deploy_changes", "deploy_timings",
                    "total_seconds"}


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    return write_fleet(tmp_path)


@pytest.fixture
def refusing_api() -> Iterator[HcloudFake]:
    fake = make_server(RecordingMachines(), tokens=("the-only-good-token",),
                       action_seconds=0.01).start()
    try:
        yield fake
    finally:
        fake.shutdown()


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The summary table's rows by node (columns split on runs of 2+ blanks)."""
    lines = stdout.strip().splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("NODE"))
    assert re.split(r"\s{2,}", lines[header]) == [
        "NODE", "STATE", "RESULT", "DURATION", "FAILED STEP", "ERROR"]
    rows = {}
    for line in lines[header + 1:]:
        cells = re.split(r"\s{2,}", line)
        if len(cells) == 6:
            rows[cells[0]] = cells[1:]
    return rows


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_all_nodes_some_failing_ends_with_a_table_and_exit_30_the_others_unaffected(
        tmp_path: Path, fleet: Path) -> None:
    result = clonefleet(tmp_path, fleet, "provision", "--all")
    assert result.returncode == 30, result.stderr
    rows = table_rows(result.stdout)
    assert sorted(rows) == sorted((*LAB_NODES, *CLOUD_NODES))
    for node in LAB_NODES:
        state, verdict, duration, step, error = rows[node]
        assert (state, verdict, step, error) == ("deployed", "nothing to do", "-", "-")
        assert duration.endswith(" s")
    for node in CLOUD_NODES:
        state, verdict, _, step, error = rows[node]
        assert (state, verdict, step) == ("not provisioned", "FAILED", "create server")
        assert f"environment variable {UNSET_TOKEN} is not set" in error
    assert "3 of 5 nodes succeeded" in result.stdout
    assert error_lines(result.stderr) == [
        "error: provision failed on 2 of 5 nodes: hel-1 (create server), hel-2 (create server)"]
    assert "Traceback" not in result.stderr
    # Progress went to stderr as timestamped lines, one start and one end per node.
    assert any(line.endswith("] hel-2: create server") for line in result.stderr.splitlines())
    assert sum(": start, from " in line for line in result.stderr.splitlines()) == 5


def test_a_region_whose_nodes_all_succeed_exits_0(tmp_path: Path, fleet: Path) -> None:
    result = clonefleet(tmp_path, fleet, "provision", "--region", "fsn", "--parallel", "2")
    assert result.returncode == 0, result.stderr
    assert sorted(table_rows(result.stdout)) == sorted(LAB_NODES)
    assert "3 of 3 nodes succeeded" in result.stdout and "at most 2 at once" in result.stdout
    assert error_lines(result.stderr) == []


def test_a_region_whose_nodes_all_fail_exits_31(tmp_path: Path, fleet: Path) -> None:
    result = clonefleet(tmp_path, fleet, "provision", "--region", "hel")
    assert result.returncode == 31, result.stderr
    assert sorted(table_rows(result.stdout)) == sorted(CLOUD_NODES)
    assert error_lines(result.stderr) == [
        "error: provision failed on 2 of 2 nodes: hel-1 (create server), hel-2 (create server)"]


def test_with_json_several_nodes_give_one_result_document_and_events_on_stderr(
        tmp_path: Path, fleet: Path) -> None:
    result = clonefleet(tmp_path, fleet, "--json", "provision", "fsn-1", "hel-1")
    assert result.returncode == 30
    document = json.loads(result.stdout)
    assert (document["succeeded"], document["failed"]) == (["fsn-1"], ["hel-1"])
    assert (document["exit_code"], document["kind"]) == (30, "SomeNodesFailed")
    nodes = {entry["node"]: entry for entry in document["nodes"]}
    assert set(nodes["fsn-1"]) >= SINGLE_NODE_KEYS
    assert nodes["fsn-1"]["ok"] and nodes["fsn-1"]["state"] == "deployed"
    assert nodes["fsn-1"]["skipped"] == ["all (already provisioned)"]  # as for one node
    failed = nodes["hel-1"]
    assert (failed["ok"], failed["failed_step"], failed["exit_code"], failed["error_kind"]) == (
        False, "create server", 2, "ConfigError")
    events = [json.loads(line) for line in result.stderr.splitlines()
              if not line.startswith("error:")]
    assert all({"time", "node", "kind"} <= set(event) for event in events)
    assert [event["node"] for event in events if event["kind"] == "result"].count("hel-1") == 1


def test_one_named_node_keeps_its_single_json_object_and_its_own_exit_code(
        tmp_path: Path, fleet: Path) -> None:
    done = clonefleet(tmp_path, fleet, "--json", "provision", "fsn-1")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) == SINGLE_NODE_KEYS
    assert report["skipped"] and report["state"] == "deployed"

    failed = clonefleet(tmp_path, fleet, "provision", "hel-1")
    assert failed.returncode == 2  # ConfigError's own code, not a many-node code
    [error] = error_lines(failed.stderr)
    assert error.startswith("error: provider cloud (hetzner-cloud): environment variable")
    assert "] hel-1: create server" in failed.stderr
    assert failed.stdout == ""

    failed_json = clonefleet(tmp_path, fleet, "--json", "provision", "hel-1")
    assert failed_json.returncode == 2
    assert json.loads(failed_json.stdout)["kind"] == "ConfigError"


def test_an_unknown_node_among_several_is_one_error_line_exit_2_and_nothing_runs(
        tmp_path: Path, fleet: Path) -> None:
    result = clonefleet(tmp_path, fleet, "provision", "fsn-1", "nope-9", "hel-1")
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown node 'nope-9'")
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_dry_run_over_several_nodes_prints_every_nodes_plan(tmp_path: Path,
                                                            fleet: Path) -> None:
    result = clonefleet(tmp_path, fleet, "provision", "fsn-1", "hel-1", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "fsn-1 (lab), now deployed" in result.stdout
    assert "hel-1 (cloud), now ordered" in result.stdout
    assert "  wipe disks: serial S-HEL1" in result.stdout
    plans = json.loads(clonefleet(tmp_path, fleet, "--json", "provision", "--region", "hel",
                                  "--dry-run").stdout)
    assert [plan["node"] for plan in plans["nodes"]] == list(CLOUD_NODES)
    assert plans["nodes"][0]["steps"][0] == "create server" and plans["failed"] == []


def test_a_provider_refusing_the_token_fails_its_node_with_the_providers_exit_code(
        tmp_path: Path, refusing_api: HcloudFake) -> None:
    fleet = write_fleet(tmp_path, refusing_api=refusing_api.url)
    result = clonefleet(tmp_path, fleet, "--json", "provision", "nbg-1", "hel-1", "fsn-1")
    assert result.returncode == 30, result.stderr
    nodes = {entry["node"]: entry for entry in json.loads(result.stdout)["nodes"]}
    assert nodes["fsn-1"]["ok"]
    assert (nodes["hel-1"]["exit_code"], nodes["nbg-1"]["exit_code"]) == (2, 4)
    assert nodes["nbg-1"]["failed_step"] == "create server"
    assert "rejected" in nodes["nbg-1"]["error"]


def test_a_deploy_that_is_not_module_function_is_one_line_before_anything_runs(
        tmp_path: Path, fleet: Path) -> None:
    result = clonefleet(tmp_path, fleet, "provision", "--all", "--deploy", "deploys.full")
    assert result.returncode == 2, result.stderr
    assert error_lines(result.stderr) == [
        "error: --deploy 'deploys.full': expected module:function, e.g. deploys.full:node or "
        "deploys.base:base"]
    assert "Traceback" not in result.stderr


def test_provision_applies_the_deploy_it_is_given(tmp_path: Path) -> None:
    from clonefleet.fleetrun import FleetRun, build_provisioner
    from clonefleet.inventory import load_fleet
    from clonefleet.state import open_store

    fleet = load_fleet(write_fleet(tmp_path))
    store = open_store(tmp_path / "state")
    name = LAB_NODES[0]
    assert build_provisioner(fleet, store, tmp_path / "state", name,
                             log=lambda message: None).deploy_ref == "deploys.full:node"
    assert build_provisioner(fleet, store, tmp_path / "state", name, log=lambda message: None,
                             deploy_ref="deploys.full:base_node").deploy_ref == \
        "deploys.full:base_node"
    assert FleetRun(fleet, store, tmp_path / "state",
                    deploy_ref="deploys.full:base_node").deploy_ref == "deploys.full:base_node"
