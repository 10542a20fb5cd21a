"""A failed deploy names the operation that failed with its own error, and how many later
operations never ran; `clonefleet deploy` over several nodes ends with one row per node. Run
through the real deploy runner (pyinfra) against a real sshd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sshd_fixture import Sshd, sshd_fleet

from clonefleet.deploy import describe_failure, describe_timings, run_deploy
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.state import open_store

pytestmark = pytest.mark.integration

DEPLOY = '''
from pyinfra.api import deploy
from pyinfra.operations import server


@deploy("broken")
def broken():
    server.shell(name="fine", commands=["true"])
    server.shell(name="write config",
                 commands=["echo 'cannot create /etc/x: Read-only file system' >&2; exit 3"])
    server.shell(name="later one", commands=["true"])
    server.shell(name="later two", commands=["true"])


@deploy("fine")
def fine():
    server.shell(name="say hello", commands=["true"])


@deploy("timed")
def timed():
    server.shell(name="quick one", commands=["true"])
    server.shell(name="slow one", commands=["sleep 1.5"])
'''


def deploy_fleet(tmp_path: Path, sshd: Sshd) -> Path:
    """fsn-1 answers on the local sshd; fsn-2 was never given an address."""
    (tmp_path / "brokendeploy.py").write_text(DEPLOY)
    fleet_path = sshd_fleet(tmp_path, sshd, "deploytest")
    with fleet_path.open("a") as fleet_file:
        fleet_file.write('\n[nodes.fsn-2]\nregion = "fsn"\ndisks = ["B"]\n')
    store = open_store(tmp_path / "state" / "deploytest")
    store.set_state("fsn-1", "booted", actor="test")
    store.set_fact("fsn-1", "ssh", {"host": "127.0.0.1", "port": sshd.port})
    store.set_fact("fsn-1", "ssh_host_key", sshd.host_key)
    return fleet_path


@pytest.fixture
def fleet(tmp_path: Path, sshd: Sshd, monkeypatch: pytest.MonkeyPatch) -> Fleet:
    """The deploy fleet, its state under tmp_path."""
    monkeypatch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "state"))
    # host data includes per-node secrets: a throwaway keystore identity
    monkeypatch.setenv("CLONEFLEET_AGE_KEY", str(tmp_path / "age.key"))
    return load_fleet(deploy_fleet(tmp_path, sshd))


def test_failed_operation_reports_its_own_error_and_what_never_ran(fleet: Fleet) -> None:
    result = run_deploy(fleet.path, ["fsn-1"], "brokendeploy:broken", timeout=300)["fsn-1"]

    assert result.failed and result.connected
    assert len(result.errors) == 1
    name, _, why = result.errors[0].partition(": ")
    assert name.endswith("write config")
    assert "Read-only file system" in why
    assert [op.split(" | ")[-1] for op in result.not_run] == ["later one", "later two"]
    line = describe_failure(result)
    assert line.endswith("(2 later operations not run)")
    assert "\n" not in line, line


def test_deploy_says_where_its_time_went(fleet: Fleet) -> None:
    result = run_deploy(fleet.path, ["fsn-1"], "brokendeploy:timed", timeout=300)["fsn-1"]

    assert not result.failed, result.errors
    timings = result.timings
    assert timings["operations"] == 2
    [slow, quick] = timings["slowest"]
    assert slow[0].endswith("slow one") and 1.4 <= slow[1] < 10, timings
    assert quick[0].endswith("quick one") and quick[1] < slow[1]
    assert timings["execute"] >= slow[1] + quick[1] - 0.01
    # Connecting and preparing (facts) are timed too; a two-operation deploy prepares in
    # milliseconds, which may round to 0.
    assert timings["connect"] > 0 and 0 <= timings["prepare"] < timings["execute"]
    line = describe_timings(timings)
    assert "2 operations" in line and "slow one 2 s" in line and "\n" not in line, line


def test_deploy_over_several_nodes_ends_with_a_row_per_node_and_json_events(
        tmp_path: Path, sshd: Sshd) -> None:
    fleet_path = deploy_fleet(tmp_path, sshd)
    env = {**os.environ, "CLONEFLEET_STATE_DIR": str(tmp_path / "state"),
           "CLONEFLEET_AGE_KEY": str(tmp_path / "age.key")}

    def clonefleet(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "clonefleet", "--fleet", str(fleet_path),
                               *args, "deploy", "fsn-1", "fsn-2", "--deploy",
                               "brokendeploy:fine"], env=env, capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)

    shown = clonefleet()
    assert shown.returncode == 10, shown.stderr
    rows = {line.split()[0]: line for line in shown.stdout.splitlines()[1:]}
    assert shown.stdout.splitlines()[0].split() == ["NODE", "RESULT", "CHANGED", "UNCHANGED",
                                                    "DETAIL"]
    assert rows["fsn-1"].split()[1:3] == ["ok", "1"]
    assert rows["fsn-1"].endswith("changed: fine | say hello")
    assert rows["fsn-2"].split()[1] == "FAILED" and rows["fsn-2"].endswith(
        "no recorded ssh address")
    assert shown.stderr.strip().splitlines()[-1] == "error: deploy failed on: fsn-2"

    scripted = clonefleet("--json")
    assert scripted.returncode == 10
    results = json.loads(scripted.stdout)
    assert (results["fsn-1"]["failed"], results["fsn-2"]["failed"]) == (False, True)
    events = [json.loads(line) for line in scripted.stderr.splitlines()
              if not line.startswith("error:")]
    ends = {event["node"]: event for event in events if event["kind"] == "result"}
    assert (ends["fsn-1"]["ok"], ends["fsn-2"]["ok"]) == (True, False)
    assert ends["fsn-2"]["error"] == "no recorded ssh address"
