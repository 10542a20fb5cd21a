"""The state store, on both backends (SQLite: unit; a real etcd: integration): transitions,
history, facts, steps, health, DNS serials, locks, leases, and safety across processes."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from etcd_fixture import Backend, EtcdServer

from clonefleet.errors import LeaseHeld, LeaseLost, StateConflict, StateError
from clonefleet.state import StateConfig, lifecycle, open_store


def test_transition_records_state_and_history_with_actor_and_reason(backend: Backend) -> None:
    store = backend.open()
    store.set_state("n1", "ordered", actor="test", reason="new")
    store.set_state("n1", "rescue", actor="prov", reason="booted rescue")
    record = store.get("n1")
    assert record is not None and record.state == "rescue" and record.actor == "prov"
    history = store.history("n1")
    assert [(t.from_state, t.to_state) for t in history] == [(None, "ordered"),
                                                             ("ordered", "rescue")]
    assert history[1].reason == "booted rescue"
    assert history[0].id < history[1].id


def test_history_of_the_whole_fleet_is_in_the_order_it_happened(backend: Backend) -> None:
    store = backend.open()
    for node, state in [("b", "ordered"), ("a", "ordered"), ("b", "rescue"), ("a", "rescue")]:
        store.set_state(node, state, actor="t")
    assert [(t.node, t.to_state) for t in store.history()] == [
        ("b", "ordered"), ("a", "ordered"), ("b", "rescue"), ("a", "rescue")]
    assert [record.name for record in store.all()] == ["a", "b"]


def test_transition_from_unexpected_state_is_refused_and_not_recorded(backend: Backend) -> None:
    store = backend.open()
    store.set_state("n1", "installed", actor="t")
    with pytest.raises(StateError, match=r"^node 'n1' is installed: drain \(to draining\) is "
                                         r"allowed only from active$"):
        store.apply("n1", lifecycle.DRAIN, actor="t")
    with pytest.raises(StateError, match="is not recorded yet: boot_rescue"):
        store.apply("n2", lifecycle.BOOT_RESCUE, actor="t")
    assert store.get("n1").state == "installed"  # type: ignore[union-attr]
    assert len(store.history("n1")) == 1 and store.get("n2") is None


def test_unknown_state_is_refused(backend: Backend) -> None:
    store = backend.open()
    with pytest.raises(StateError, match="unknown state"):
        store.set_state("n1", "exploded", actor="t")
    assert store.get("n1") is None


def test_facts_round_trip_json_and_delete(backend: Backend) -> None:
    store = backend.open()
    store.set_fact("n1", "ssh", {"host": "127.0.0.1", "port": 2200})
    assert store.get_fact("n1", "ssh") == {"host": "127.0.0.1", "port": 2200}
    assert store.facts("n1") == {"ssh": {"host": "127.0.0.1", "port": 2200}}
    store.delete_fact("n1", "ssh")
    assert store.get_fact("n1", "ssh", "gone") == "gone"
    store.set_fact("n1", "a", 1)
    store.set_fact("n1", "note", "größer ✓")  # not latin-1: stored as UTF-8
    store.set_fact("n2", "a", 2)
    assert store.get_fact("n1", "note") == "größer ✓"
    store.set_fact("n10", "ab", 3)  # neither a node named like a prefix nor a longer key
    assert store.fact_values("a") == {"n1": 1, "n2": 2}
    store.delete_facts("n1")
    assert store.facts("n1") == {} and store.facts("n2") == {"a": 2}


def test_failed_transaction_rolls_back_everything(backend: Backend) -> None:
    store = backend.open()
    with pytest.raises(RuntimeError), store.transaction():
        store.set_state("n1", "ordered", actor="t")
        store.set_fact("n1", "x", 1)
        raise RuntimeError("crash")
    assert store.get("n1") is None and store.get_fact("n1", "x") is None
    assert store.history("n1") == []


def test_a_transaction_reads_its_own_writes_and_others_see_them_only_after(
        backend: Backend) -> None:
    store, other = backend.open(), backend.open()
    store.set_fact("n1", "old", 1)
    with store.transaction():
        store.set_state("n1", "ordered", actor="t")
        store.apply("n1", lifecycle.BOOT_RESCUE, actor="t")
        store.delete_facts("n1")
        store.set_fact("n1", "new", 2)
        assert store.get("n1").state == "rescue"  # type: ignore[union-attr]
        assert store.facts("n1") == {"new": 2}
        assert [t.to_state for t in store.history("n1")] == ["ordered", "rescue"]
        assert other.get("n1") is None and other.facts("n1") == {"old": 1}
    assert other.get("n1").state == "rescue"  # type: ignore[union-attr]
    assert other.facts("n1") == {"new": 2}
    assert [t.to_state for t in other.history("n1")] == ["ordered", "rescue"]


def _hammer(state_dir: str, config: StateConfig, node: str, count: int) -> None:
    store = open_store(state_dir, config)
    for index in range(count):
        state = "active" if index % 2 else "drained"
        store.set_state(node, state, actor=f"proc-{node}", reason=str(index))


def test_two_processes_writing_at_once_lose_no_transition(backend: Backend) -> None:
    backend.open()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_hammer, args=(str(backend.state_dir), backend.config,
                                                     node, 40)) for node in ("a", "b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    store = backend.open()
    assert len(store.history("a")) == 40 and len(store.history("b")) == 40
    assert store.get("a").state == "active"  # type: ignore[union-attr]


RACED_NODES = [f"n{index}" for index in range(25)]


def _drain_all(state_dir: str, config: StateConfig, go: str, results: str, name: str) -> None:
    store = open_store(state_dir, config)
    while not Path(go).exists():
        time.sleep(0.002)
    won = []
    for node in RACED_NODES:  # every process races for every node, in the same order
        try:
            store.apply(node, lifecycle.DRAIN, actor=name)
            won.append(node)
        except StateError:
            pass
    Path(results, name).write_text(" ".join(won))


def test_processes_moving_a_node_from_the_same_state_at_once_exactly_one_wins(
        backend: Backend, tmp_path: Path) -> None:
    store = backend.open()
    for node in RACED_NODES:
        store.set_state(node, "active", actor="t")
    results = tmp_path / "results"
    results.mkdir()
    go = tmp_path / "go"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_drain_all, args=(
        str(backend.state_dir), backend.config, str(go), str(results), f"p{index}"))
        for index in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(1.5)  # let every process import clonefleet and wait for the signal
    go.write_text("go")
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    won = [node for path in results.iterdir() for node in path.read_text().split()]
    assert sorted(won) == sorted(RACED_NODES)  # each node won once, by one process
    for node in RACED_NODES:
        assert [t.to_state for t in store.history(node)] == ["active", "draining"]


def test_eight_threads_taking_dns_serials_never_share_one(backend: Backend) -> None:
    def take(index: int) -> list[int]:
        store = backend.open()  # a store object each, like separate processes
        return [store.next_dns_serial(f"thread-{index}") for _ in range(5)]

    with ThreadPoolExecutor(8) as pool:
        per_thread = list(pool.map(take, range(8)))
    serials = [serial for taken in per_thread for serial in taken]
    assert len(set(serials)) == 40
    assert all(taken == sorted(taken) for taken in per_thread)
    assert backend.open().last_dns_serial() == max(serials)


def test_dns_serials_increase_and_a_failed_push_keeps_the_servers_last_serial(
        backend: Backend) -> None:
    store = backend.open()
    assert store.last_dns_serial() is None
    first = store.next_dns_serial("t")
    second = store.next_dns_serial("t")
    assert second > first >= int(time.time()) - 5 and store.last_dns_serial() == second
    store.record_dns_server("n1", first, True)
    store.record_dns_server("n1", second, False, "refused")
    store.record_dns_server("n0", second, True)
    servers = store.dns_servers()
    assert [(s.node, s.serial, s.ok, s.error) for s in servers] == [
        ("n0", second, True, ""), ("n1", first, False, "refused")]


def test_step_timings_are_kept_per_node(backend: Backend) -> None:
    store = backend.open()
    store.record_step("n1", "install", "done", 12.5)
    store.record_step("n1", "unlock", "failed", 1.0, "bad passphrase")
    store.record_step("n2", "install", "done", 3.0)
    steps = store.steps("n1")
    assert [(s.step, s.status) for s in steps] == [("install", "done"), ("unlock", "failed")]
    assert steps[1].detail == "bad passphrase"


def test_health_checks_are_returned_newest_first(backend: Backend) -> None:
    store = backend.open()
    store.record_health("n1", True, source="rollout")
    store.record_health("n1", False, source="smartwatch", detail="disk sda failing")
    store.record_health("n2", True, source="operator")
    latest = store.health("n1")
    assert [(h.ok, h.source) for h in latest] == [(False, "smartwatch")]
    assert [h.ok for h in store.health("n1", limit=5)] == [False, True]


def test_concurrent_transaction_blocks_wait_for_each_other_and_both_commit(
        backend: Backend) -> None:
    store = backend.open()
    for node in ("a", "b"):
        store.set_state(node, "active", actor="t")

    def drain(node: str) -> None:
        own = backend.open()
        with own.transaction():
            active = [record.name for record in own.all() if record.state == "active"]
            time.sleep(0.2)  # both blocks have read before either writes
            own.apply(node, lifecycle.DRAIN, actor=node, reason=f"saw {len(active)} active")

    threads = [threading.Thread(target=drain, args=(node,)) for node in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    reasons = sorted(store.get(node).reason for node in ("a", "b"))  # type: ignore[union-attr]
    assert reasons == ["saw 1 active", "saw 2 active"]  # the second read after the first wrote


def test_a_held_lock_refuses_another_holder_until_released(backend: Backend) -> None:
    store, other = backend.open(), backend.open()
    with store.lock("rollout"):
        started = time.monotonic()
        with pytest.raises(StateError, match=r"lock 'rollout' .*still held after 0 s"), \
                other.lock("rollout", timeout=0.3):
            pass
        assert time.monotonic() - started >= 0.3
    with other.lock("rollout", timeout=1), pytest.raises(StateError, match="still held"), \
            store.lock("rollout", timeout=0.1):
        pass


HOLD_SCRIPT = """
import sys, time
from clonefleet.state import StateConfig, lifecycle, open_store
from clonefleet.state.etcd import EtcdStateStore
backend, state_dir, endpoint, prefix = sys.argv[1:5]
store = (EtcdStateStore(StateConfig("etcd", (endpoint,), prefix), "t", lock_ttl=2)
         if backend == "etcd" else open_store(state_dir))
with store.lock("rollout"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_lock_whose_holder_was_killed_is_free_again_soon(backend: Backend) -> None:
    endpoint = backend.config.endpoints[0] if backend.config.endpoints else ""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, backend.name,
                               str(backend.state_dir), endpoint, backend.config.prefix],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        store = backend.open()
        with pytest.raises(StateError, match="still held"), store.lock("rollout", timeout=0.2):
            pass
    finally:
        holder.kill()  # no release: SIGKILL
        holder.wait(10)
    started = time.monotonic()
    with store.lock("rollout", timeout=15):
        waited = time.monotonic() - started
    assert waited < (5 if backend.name == "etcd" else 1)  # etcd: the holder's 2 s lease


def test_a_lease_held_by_one_holder_refuses_another_until_released(backend: Backend) -> None:
    store, other = backend.open(), backend.open()
    taken = store.take_lease("unlock-fsn-1", "unlockd-a", ttl=30)
    assert taken.holder == "unlockd-a" and taken.expires_at > time.time() + 20
    with pytest.raises(LeaseHeld, match="'unlock-fsn-1' is held by 'unlockd-a'"):
        other.take_lease("unlock-fsn-1", "unlockd-b", ttl=30)
    assert store.take_lease("unlock-fsn-1", "unlockd-a", ttl=30).holder == "unlockd-a"
    assert other.renew_lease("unlock-fsn-1", "unlockd-a").expires_at > time.time() + 20
    with pytest.raises(LeaseLost):
        other.renew_lease("unlock-fsn-1", "unlockd-b")
    assert other.release_lease("unlock-fsn-1", "unlockd-b") is False
    assert other.lease("unlock-fsn-1").holder == "unlockd-a"  # type: ignore[union-attr]
    assert store.release_lease("unlock-fsn-1", "unlockd-a") is True
    assert other.lease("unlock-fsn-1") is None
    assert other.take_lease("unlock-fsn-1", "unlockd-b", ttl=30).holder == "unlockd-b"


def test_a_lease_not_renewed_expires_and_another_holder_takes_it(backend: Backend) -> None:
    store, other = backend.open(), backend.open()
    store.take_lease("unlock-fsn-2", "unlockd-a", ttl=1)
    deadline = time.monotonic() + 10  # etcd rounds a TTL up to its minimum (about 2 s)
    while store.lease("unlock-fsn-2") is not None:
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.2)
    with pytest.raises(LeaseLost, match="no longer held by 'unlockd-a'"):
        store.renew_lease("unlock-fsn-2", "unlockd-a")
    assert other.take_lease("unlock-fsn-2", "unlockd-b", ttl=30).holder == "unlockd-b"


def test_a_renewed_lease_outlives_its_ttl(backend: Backend) -> None:
    store, other = backend.open(), backend.open()
    store.take_lease("unlock-fsn-3", "unlockd-a", ttl=2)
    for _ in range(5):
        time.sleep(0.8)
        store.renew_lease("unlock-fsn-3", "unlockd-a")
    with pytest.raises(LeaseHeld):
        other.take_lease("unlock-fsn-3", "unlockd-b", ttl=2)


@pytest.mark.parametrize("name", ["", "a/b", ".hidden", "spaced name"])
def test_bad_lease_names_are_refused(backend: Backend, name: str) -> None:
    with pytest.raises(StateError, match="invalid lease name"):
        backend.open().take_lease(name, "me", ttl=5)


def test_a_single_write_during_another_block_waits_for_it_and_both_land(
        backend: Backend) -> None:
    # A rollout drains two nodes at once: one node's block reads every node while the other
    # node's thread moves its own node on with a single operation. The block must commit
    # and the single write land after it, as SQLite writers wait for each other.
    store = backend.open()
    for node in ("a", "b"):
        store.set_state(node, "active", actor="t")
    read = threading.Event()
    errors: list[BaseException] = []

    def block() -> None:
        own = backend.open()
        try:
            with own.transaction():
                active = [record.name for record in own.all() if record.state == "active"]
                read.set()
                time.sleep(0.5)  # the single write below is tried meanwhile
                own.apply("a", lifecycle.DRAIN, actor="block",
                          reason=f"saw {len(active)} active")
        except BaseException as error:
            errors.append(error)
            raise

    def single() -> None:
        assert read.wait(10)
        try:
            backend.open().apply("b", lifecycle.DRAIN, actor="single", reason="alone")
        except BaseException as error:
            errors.append(error)
            raise

    threads = [threading.Thread(target=block), threading.Thread(target=single)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(40)
    assert errors == []
    drains = [(move.node, move.actor, move.reason) for move in store.history()
              if move.to_state == "draining"]
    assert drains == [("a", "block", "saw 2 active"), ("b", "single", "alone")]


@pytest.mark.integration
def test_etcd_block_whose_lock_lapsed_and_reads_changed_writes_nothing(
        etcd_server: EtcdServer, tmp_path: Path) -> None:
    from clonefleet.state.etcd import EtcdStateStore

    backend = Backend.etcd(etcd_server, tmp_path)
    store, other = backend.open(), backend.open()
    assert isinstance(store, EtcdStateStore)
    store.set_state("n1", "active", actor="t")
    with pytest.raises(StateConflict, match="nothing was written"), store.transaction():
        assert store.get("n1").state == "active"  # type: ignore[union-attr]
        # The block's process is cut off for longer than the lock's lease: it lapses...
        mutex = store.cluster.range(store.prefix + b"mutex/transaction")[0][0]
        assert store.cluster.revoke(json.loads(mutex.value)["lease"])
        other.set_state("n1", "draining", actor="other")  # ...and another writer goes on
        store.set_state("n1", "drained", actor="t")
        store.set_fact("n1", "drained_by", "t")
    assert store.get("n1").state == "draining"  # type: ignore[union-attr]
    assert store.get_fact("n1", "drained_by") is None


@pytest.mark.integration
def test_etcd_single_write_waits_at_most_as_long_as_a_block_then_says_why(
        etcd_server: EtcdServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clonefleet.state import etcd

    monkeypatch.setattr(etcd, "TRANSACTION_LOCK_SECONDS", 1.0)
    backend = Backend.etcd(etcd_server, tmp_path)
    store, other = backend.open(), backend.open()
    store.set_state("n1", "active", actor="t")
    with store.transaction():
        store.get("n1")
        started = time.monotonic()
        with pytest.raises(StateError, match=r"writing fact 'k' of 'n1': the state transaction "
                                             r"lock \(etcd key .*mutex/transaction\) still "
                                             r"held after 1 s"):
            other.set_fact("n1", "k", 1)  # the same thread: it can never be released
        assert 1.0 <= time.monotonic() - started < 5
        store.set_state("n1", "drained", actor="t")
    assert store.get("n1").state == "drained"  # type: ignore[union-attr]
    assert other.get_fact("n1", "k") is None


@pytest.mark.integration
def test_etcd_unreachable_is_one_clear_error(tmp_path: Path) -> None:
    from clonefleet.lab.qemu import free_port
    from clonefleet.state.etcd import EtcdStateStore

    store = EtcdStateStore(StateConfig("etcd", (f"http://127.0.0.1:{free_port()}",), "x",
                                       timeout=1), "fleet")
    with pytest.raises(StateError, match=r"no etcd endpoint answered a read \(http://127"):
        store.get("n1")
    with pytest.raises(StateError, match="may or may not have been applied"):
        store.set_fact("n1", "k", 1)
