"""The SQLite state store: transitions, history, facts, and safety across processes."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from clonefleet.errors import StateError
from clonefleet.state import SqliteStateStore

pytestmark = pytest.mark.unit


def test_transition_records_state_and_history_with_actor_and_reason(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "s.sqlite")
    store.transition("n1", "ordered", actor="test", reason="new")
    store.transition("n1", "rescue", actor="prov", reason="booted rescue")
    record = store.get("n1")
    assert record is not None and record.state == "rescue" and record.actor == "prov"
    history = store.history("n1")
    assert [(t.from_state, t.to_state) for t in history] == [(None, "ordered"),
                                                             ("ordered", "rescue")]
    assert history[1].reason == "booted rescue"


def test_transition_from_unexpected_state_is_refused_and_not_recorded(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "s.sqlite")
    store.transition("n1", "installed", actor="t")
    with pytest.raises(StateError, match="is installed, expected one of: active"):
        store.transition("n1", "drained", actor="t", expect_from=["active"])
    assert store.get("n1").state == "installed"  # type: ignore[union-attr]
    assert len(store.history("n1")) == 1


def test_unknown_state_is_refused(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "s.sqlite")
    with pytest.raises(StateError, match="unknown state"):
        store.transition("n1", "exploded", actor="t")


def test_facts_round_trip_json_and_delete(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "s.sqlite")
    store.set_fact("n1", "ssh", {"host": "127.0.0.1", "port": 2200})
    assert store.get_fact("n1", "ssh") == {"host": "127.0.0.1", "port": 2200}
    assert store.facts("n1") == {"ssh": {"host": "127.0.0.1", "port": 2200}}
    store.delete_fact("n1", "ssh")
    assert store.get_fact("n1", "ssh", "gone") == "gone"
    store.set_fact("n1", "a", 1)
    store.set_fact("n2", "a", 2)
    store.delete_facts("n1")
    assert store.facts("n1") == {} and store.facts("n2") == {"a": 2}


def test_failed_transaction_rolls_back_everything(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "s.sqlite")
    with pytest.raises(RuntimeError), store.transaction():
        store.transition("n1", "ordered", actor="t")
        store.set_fact("n1", "x", 1)
        raise RuntimeError("crash")
    assert store.get("n1") is None and store.get_fact("n1", "x") is None


def _hammer(path: str, node: str, count: int) -> None:
    store = SqliteStateStore(path)
    for index in range(count):
        state = "active" if index % 2 else "drained"
        store.transition(node, state, actor=f"proc-{node}", reason=str(index))


def test_two_processes_writing_at_once_lose_no_transition(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sqlite")
    SqliteStateStore(path)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_hammer, args=(path, node, 40)) for node in ("a", "b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    store = SqliteStateStore(path)
    assert len(store.history("a")) == 40 and len(store.history("b")) == 40
    assert store.get("a").state == "active"  # type: ignore[union-attr]


def test_step_timings_are_kept_per_node(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "s.sqlite")
    store.record_step("n1", "install", "done", 12.5)
    store.record_step("n1", "unlock", "failed", 1.0, "bad passphrase")
    steps = store.steps("n1")
    assert [(s.step, s.status) for s in steps] == [("install", "done"), ("unlock", "failed")]
    assert steps[1].detail == "bad passphrase"
