"""The smartwatch drain token through the real deploy runner and a real sshd: issued only by a
deploy that writes it (the real `drain_token` step of deploys/smartwatch.py, pointed at a
folder under tmp), recorded as delivered only when that write succeeded, revoked otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from sshd_fixture import Sshd, sshd_fleet

from clonefleet.deploy import DeployResult, run_deploy
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.serve import TOKEN_FACT, DrainService
from clonefleet.services.smartwatch import DELIVERED_FACT, PENDING_FACT
from clonefleet.state import SqliteStateStore, open_store

pytestmark = pytest.mark.integration

DEPLOY = '''
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, server

from deploys.smartwatch import drain_token

CONFIG_DIR = {config_dir!r}
NOT_A_FOLDER = {not_a_folder!r}
BLOCKED = {blocked!r}


@deploy("token test")
def with_token():
    host.data.smartwatch_config_dir = CONFIG_DIR
    files.directory(name="config folder", path=CONFIG_DIR, mode="700")
    drain_token()


@deploy("base test")
def without_smartwatch():
    server.shell(name="base step", commands=["true"])


@deploy("failing write")
def failing_write():
    # The config folder is missing when the deploy is prepared and a regular file by the
    # time the token is written: the write itself fails.
    host.data.smartwatch_config_dir = BLOCKED
    server.shell(name="a file in the way", commands=[f"touch {{BLOCKED}}"])
    drain_token()


@deploy("unpreparable")
def unpreparable():
    # A regular file where the config folder should be: pyinfra refuses while preparing.
    host.data.smartwatch_config_dir = NOT_A_FOLDER
    drain_token()


@deploy("never written")
def never_written():
    host.data.smartwatch_config_dir = CONFIG_DIR
    server.shell(name="breaks first", commands=["exit 3"])
    drain_token()
'''


@pytest.fixture
def node(tmp_path: Path, sshd: Sshd,
         monkeypatch: pytest.MonkeyPatch) -> tuple[Fleet, SqliteStateStore, Path]:
    """fsn-1 on the local sshd, with a deploy module whose paths are all under tmp_path."""
    monkeypatch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "state"))
    config_dir = tmp_path / "node" / "etc-smartwatch"
    not_a_folder = tmp_path / "node" / "not-a-folder"
    not_a_folder.parent.mkdir()
    not_a_folder.write_text("a file\n")
    (tmp_path / "tokendeploy.py").write_text(DEPLOY.format(
        config_dir=str(config_dir), not_a_folder=str(not_a_folder),
        blocked=str(tmp_path / "node" / "blocked")))
    fleet = load_fleet(sshd_fleet(tmp_path, sshd, "tokentest"))
    store = open_store(tmp_path / "state" / "tokentest")
    store.set_state("fsn-1", "booted", actor="test")
    store.set_fact("fsn-1", "ssh", {"host": "127.0.0.1", "port": sshd.port})
    store.set_fact("fsn-1", "ssh_host_key", sshd.host_key)
    return fleet, store, config_dir


def run(fleet: Fleet, function: str) -> DeployResult:
    """Run tokendeploy:function on fsn-1 through the real runner."""
    return run_deploy(fleet.path, ["fsn-1"], f"tokendeploy:{function}", timeout=300)["fsn-1"]


def deploy(fleet: Fleet, function: str) -> bool:
    """True when tokendeploy:function succeeded on fsn-1."""
    return not run(fleet, function).failed


def test_a_deploy_that_writes_the_token_marks_it_delivered_and_serve_accepts_it(
        node: tuple[Fleet, SqliteStateStore, Path]) -> None:
    fleet, store, config_dir = node

    assert deploy(fleet, "with_token")

    token_file = config_dir / "drain_token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert store.get_fact("fsn-1", DELIVERED_FACT) is True
    assert store.get_fact("fsn-1", PENDING_FACT) is None
    assert DrainService(fleet, store).caller(token) == "fsn-1"
    # A later deploy issues nothing new: the token on the node stays the valid one.
    assert deploy(fleet, "with_token")
    assert token_file.read_text().strip() == token
    assert DrainService(fleet, store).caller(token) == "fsn-1"


def test_a_deploy_without_smartwatch_issues_no_token_and_delivers_none(
        node: tuple[Fleet, SqliteStateStore, Path]) -> None:
    fleet, store, config_dir = node

    assert deploy(fleet, "without_smartwatch")

    assert store.get_fact("fsn-1", DELIVERED_FACT) is None
    assert store.get_fact("fsn-1", TOKEN_FACT) is None
    assert not config_dir.exists()
    # The issue's sequence: the next deploy with smartwatch still gives the node its token.
    assert deploy(fleet, "with_token")
    token = (config_dir / "drain_token").read_text().strip()
    assert DrainService(fleet, store).caller(token) == "fsn-1"


@pytest.mark.parametrize(("function", "error"), [
    ("failing_write", "smartwatch drain token: "),  # the write itself failed
    ("never_written", "breaks first: "),  # an earlier operation failed: never ran
    ("unpreparable", "cannot prepare the deploy: "),  # pyinfra refused it beforehand
])
def test_a_token_that_was_not_written_is_revoked_and_left_undelivered(
        node: tuple[Fleet, SqliteStateStore, Path], function: str, error: str) -> None:
    fleet, store, config_dir = node

    result = run(fleet, function)

    assert result.failed and error in result.errors[0], result.errors

    assert store.get_fact("fsn-1", DELIVERED_FACT) is None
    assert store.get_fact("fsn-1", PENDING_FACT) is None
    assert store.get_fact("fsn-1", TOKEN_FACT) is None  # issued for the deploy, now revoked
    assert not (config_dir / "drain_token").exists()
    # A base deploy after the failed one (the issue's case) still delivers nothing.
    assert deploy(fleet, "without_smartwatch")
    assert store.get_fact("fsn-1", DELIVERED_FACT) is None
    assert store.get_fact("fsn-1", TOKEN_FACT) is None
