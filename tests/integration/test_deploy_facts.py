"""The deploy runner reads fewer facts (`clonefleet.deploy_facts`) and stays exact: through
the real runner and a real sshd, with a fact whose every reading leaves a line in a log on
the node, so the test counts readings on the node's side."""

from __future__ import annotations

from pathlib import Path

import pytest
from sshd_fixture import Sshd, sshd_fleet

from clonefleet.deploy import DeployResult, run_deploy
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.state import open_store

pytestmark = pytest.mark.integration

DEPLOY = '''
from io import StringIO

from pyinfra import host
from pyinfra.api import FactBase, deploy, operation
from pyinfra.operations import files, server

LOG = {log!r}
TARGET = {target!r}


class Counted(FactBase):
    """The file's content; each reading appends a line to LOG on the node."""

    def command(self, path):
        return f"echo {{path}} >> {{LOG}}; cat {{path}} 2>/dev/null || true"

    def process(self, output):
        return "\\n".join(output)


@operation()
def counted_put(content, dest):
    # Two readings of the same fact with the same arguments in one operation.
    if host.get_fact(Counted, path=dest) == content and host.get_fact(Counted, path=dest) \\
            == content:
        host.noop(f"{{dest}} is up to date")
        return
    yield f"printf %s {{content!r}} > {{dest}}"


@deploy("nothing to do")
def unchanged():
    counted_put(name="first", content="one", dest=TARGET + ".1")
    counted_put(name="second", content="two", dest=TARGET + ".2")


@deploy("a change, then two files that are up to date")
def change_then_two():
    server.shell(name="a change", commands=["true"])
    counted_put(name="first", content="one", dest=TARGET + ".1")
    counted_put(name="second", content="two", dest=TARGET + ".2")


class Failing(FactBase):
    def command(self):
        return "echo half an answer; exit 3"


@deploy("a fact that cannot be read")
def failing_fact():
    counted_put(name="first", content="one", dest=TARGET + ".1")
    host.get_fact(Failing)


@deploy("a change before a file that was up to date")
def changed_first():
    # While preparing, TARGET.2 is up to date; by the time "second" runs, the operation
    # before it has removed it: "second" must read it again and write it back.
    server.shell(name="remove the second file", commands=[f"rm -f {{TARGET}}.2"])
    counted_put(name="second", content="two", dest=TARGET + ".2")
'''


@pytest.fixture
def node(tmp_path: Path, sshd: Sshd, monkeypatch: pytest.MonkeyPatch) -> tuple[Fleet, Path]:
    monkeypatch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "state"))
    target = tmp_path / "node" / "file"
    target.parent.mkdir()
    (tmp_path / "factdeploy.py").write_text(DEPLOY.format(log=str(tmp_path / "node" / "log"),
                                                          target=str(target)))
    fleet = load_fleet(sshd_fleet(tmp_path, sshd, "facttest"))
    store = open_store(tmp_path / "state" / "facttest")
    store.set_state("fsn-1", "booted", actor="test")
    store.set_fact("fsn-1", "ssh", {"host": "127.0.0.1", "port": sshd.port})
    store.set_fact("fsn-1", "ssh_host_key", sshd.host_key)
    return fleet, target


def run(fleet: Fleet, function: str) -> DeployResult:
    result = run_deploy(fleet.path, ["fsn-1"], f"factdeploy:{function}", timeout=300)["fsn-1"]
    assert not result.failed, result.errors
    return result


def readings(target: Path) -> list[str]:
    log = target.parent / "log"
    lines = log.read_text().split() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


def test_a_deploy_with_nothing_to_do_reads_each_fact_once(node: tuple[Fleet, Path]) -> None:
    fleet, target = node
    first = run(fleet, "unchanged")
    assert len(first.changed) == 2
    assert (target.parent / "file.1").read_text() == "one"
    readings(target)

    second = run(fleet, "unchanged")

    assert second.changed == () and second.unchanged == 2
    # Once each while preparing (not twice per operation), and not again while executing;
    # both in one command, from the list the first deploy left.
    assert readings(target) == [f"{target}.1", f"{target}.2"]
    # The first run: each read alone while prepared; file.2 again after file.1 was written.
    assert first.timings["facts"] == {"in one go": 1, "alone": 2}
    assert second.timings["facts"] == {"in one go": 2, "alone": 0}


def test_a_fact_that_fails_in_one_go_is_read_alone_and_fails_as_before(
        node: tuple[Fleet, Path]) -> None:
    fleet, _ = node
    results = [run_deploy(fleet.path, ["fsn-1"], "factdeploy:failing_fact",
                          timeout=300)["fsn-1"] for _ in range(2)]

    assert [result.failed for result in results] == [True, True]
    assert results[0].errors == results[1].errors and results[0].errors, results[0]
    # Listed by the first run, tried in one go by the second, and read alone again there.
    assert results[1].timings["facts"] == {"in one go": 1, "alone": 1}


def test_an_operation_after_a_change_reads_the_node_again(node: tuple[Fleet, Path]) -> None:
    fleet, target = node
    run(fleet, "unchanged")
    readings(target)

    result = run(fleet, "changed_first")

    assert any("second" in name for name in result.changed), result.changed
    assert (target.parent / "file.2").read_text() == "two"
    # Read while preparing (up to date then) and again after the removal ran.
    assert readings(target) == [f"{target}.2", f"{target}.2"]


def test_after_a_change_the_next_operations_facts_are_read_in_one_go(
        node: tuple[Fleet, Path]) -> None:
    fleet, target = node
    run(fleet, "unchanged")
    readings(target)

    result = run(fleet, "change_then_two")

    assert result.changed == ("factdeploy:change_then_two | a change",) \
        or len(result.changed) == 1, result.changed
    # Prepared: each file read once (alone: this deploy has no list yet). Executed: both read
    # again after the change, in one command, and each only once.
    assert readings(target) == [f"{target}.1", f"{target}.2", f"{target}.1", f"{target}.2"]
    assert result.timings["facts"] == {"in one go": 2, "alone": 2}
