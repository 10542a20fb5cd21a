"""The lifecycle table (`clonefleet.state.lifecycle`): every named transition on both backends
(SQLite: unit; a real etcd: integration), races between writers, and that the table is the one
place states and their moves are written down (code and docs/state.md)."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from etcd_fixture import Backend

from clonefleet import disks, provision, retire
from clonefleet.dnsmap import drain, model
from clonefleet.errors import StateError
from clonefleet.state import LIFECYCLE, lifecycle

ROOT = Path(__file__).resolve().parents[2]
FROM_STATES: list[str | None] = [None, *lifecycle.STATES]


@pytest.mark.parametrize("transition", lifecycle.TRANSITIONS, ids=lambda move: move.name)
def test_each_transition_is_accepted_from_its_states_and_refused_from_every_other(
        backend: Backend, transition: lifecycle.NamedTransition) -> None:
    store = backend.open()
    for index, start in enumerate(FROM_STATES):
        node = f"n{index}"
        if start is not None:
            store.set_state(node, start, actor="setup")
        if transition.allows(start):
            record = store.apply(node, transition, actor="t", reason=transition.name)
            assert record.state == transition.to
            assert store.get(node).state == transition.to  # type: ignore[union-attr]
            last = store.history(node)[-1]
            assert (last.from_state, last.to_state, last.reason) == (
                start, transition.to, transition.name)
        else:
            with pytest.raises(StateError, match=rf"^node '{node}' is "
                                                 rf"{start or 'not recorded yet'}: "
                                                 rf"{transition.name} \(to {transition.to}\) "
                                                 r"is allowed only from "):
                store.apply(node, transition, actor="t")
            record_after = store.get(node)
            assert (record_after.state if record_after else None) == start
            assert len(store.history(node)) == (0 if start is None else 1)


def test_a_rollout_takes_a_node_out_of_dns_updates_it_and_puts_it_back(
        backend: Backend) -> None:
    store = backend.open()
    store.set_state("n1", "active", actor="setup")
    for move in (lifecycle.DRAIN, lifecycle.SETTLE, lifecycle.BEGIN_UPDATE,
                 lifecycle.FINISH_UPDATE, lifecycle.UNDRAIN):
        store.apply("n1", move, actor="rollout")
    assert [t.to_state for t in store.history("n1")] == [
        "active", "draining", "drained", "updating", "drained", "active"]
    store.apply("n1", lifecycle.DRAIN, actor="rollout")
    with pytest.raises(StateError, match=r"begin_update .* only from drained"):
        store.apply("n1", lifecycle.BEGIN_UPDATE, actor="rollout")


def test_two_threads_moving_one_node_from_the_same_state_exactly_one_wins(
        backend: Backend) -> None:
    nodes = [f"n{index}" for index in range(10)]
    setup = backend.open()
    for node in nodes:
        setup.set_state(node, "active", actor="setup")
    stores = [backend.open(), backend.open()]  # one store object each, like two controllers
    barrier = threading.Barrier(2)
    won: dict[str, list[str]] = {node: [] for node in nodes}
    refused: dict[str, list[str]] = {node: [] for node in nodes}

    def race(name: str, store_index: int) -> None:
        store = stores[store_index]
        for node in nodes:
            barrier.wait(10)
            try:
                store.apply(node, lifecycle.DRAIN, actor=name)
                won[node].append(name)
            except StateError as error:
                refused[node].append(str(error))

    threads = [threading.Thread(target=race, args=(f"t{index}", index)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for node in nodes:
        assert len(won[node]) == 1, (node, won[node], refused[node])
        assert refused[node] == [f"node {node!r} is draining: drain (to draining) is allowed "
                                 "only from active"]
        history = setup.history(node)
        assert [t.to_state for t in history] == ["active", "draining"]
        assert history[-1].actor == won[node][0]


@pytest.mark.unit
def test_lifecycle_is_the_tables_states_and_every_state_is_reachable() -> None:
    assert LIFECYCLE == lifecycle.STATES
    named = {state for move in lifecycle.TRANSITIONS for state in move.from_states} | {
        move.to for move in lifecycle.TRANSITIONS}
    assert named == {None, *lifecycle.STATES}
    assert len(lifecycle.BY_NAME) == len(lifecycle.TRANSITIONS)
    for move in lifecycle.TRANSITIONS:  # each one is reachable as lifecycle.<NAME>
        assert getattr(lifecycle, move.name.upper()) is move


@pytest.mark.unit
def test_state_groups_elsewhere_name_only_states_of_the_table() -> None:
    groups = {"provision.BEFORE_INSTALL": provision.BEFORE_INSTALL,
              "provision.PROVISIONED": provision.PROVISIONED,
              "disks.BEFORE_INSTALL": disks.BEFORE_INSTALL,
              "dnsmap.model.DRAIN_STATES": model.DRAIN_STATES,
              "dnsmap.model.UNKNOWN_STATE": (model.UNKNOWN_STATE,),
              "dnsmap.drain.UNDRAIN_FROM": drain.UNDRAIN_FROM,
              "retire.RETIRE_FROM": retire.RETIRE_FROM}
    for name, states in groups.items():
        assert set(states) <= {None, *lifecycle.STATES}, name


def _sources() -> dict[str, str]:
    return {str(path.relative_to(ROOT)): path.read_text()
            for path in sorted((ROOT / "clonefleet").rglob("*.py"))
            if path.parent.name != "state"}


@pytest.mark.unit
def test_the_modules_named_as_users_of_a_transition_are_the_ones_that_use_it() -> None:
    used: dict[str, set[str]] = {move.name: set() for move in lifecycle.TRANSITIONS}
    for module, text in _sources().items():
        for constant in re.findall(r"\blifecycle\.([A-Z_]+)\b", text):
            if constant.lower() in used:
                used[constant.lower()].add(module)
    assert used == {move.name: set(move.used_by) for move in lifecycle.TRANSITIONS}


@pytest.mark.unit
def test_no_module_outside_the_state_store_writes_a_state_unchecked() -> None:
    offenders = [module for module, text in _sources().items()
                 if re.search(r"\.(set_state|transition)\(", text)]
    assert offenders == []


@pytest.mark.unit
def test_docs_show_the_lifecycle_table_of_the_code() -> None:
    docs = (ROOT / "docs" / "state.md").read_text()
    assert lifecycle.markdown_table() in docs, (
        "docs/state.md is out of date: paste the output of `python -c 'from "
        "clonefleet.state.lifecycle import markdown_table as t; print(t(), end=\"\")'` "
        "into its lifecycle section")
