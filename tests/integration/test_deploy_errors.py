"""A failed deploy names the operation that failed with its own error, and how many later
operations never ran, run through the real deploy runner (pyinfra) against a real sshd."""

from __future__ import annotations

from pathlib import Path

import pytest
from sshd_fixture import Sshd, sshd_fleet

from clonefleet.deploy import describe_failure, run_deploy
from clonefleet.inventory import load_fleet
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
'''


def test_failed_operation_reports_its_own_error_and_what_never_ran(
        tmp_path: Path, sshd: Sshd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "brokendeploy.py").write_text(DEPLOY)
    fleet_path = sshd_fleet(tmp_path, sshd, "deploytest")
    fleet = load_fleet(fleet_path)
    store = open_store(tmp_path / "state" / "deploytest")
    store.transition("fsn-1", "booted", actor="test")
    store.set_fact("fsn-1", "ssh", {"host": "127.0.0.1", "port": sshd.port})
    store.set_fact("fsn-1", "ssh_host_key", sshd.host_key)

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
