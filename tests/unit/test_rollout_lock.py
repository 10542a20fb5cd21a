"""The fleet-wide rollout lock (clonefleet.rollout.lock) on both store backends: one holder,
a one-line refusal naming it, a heartbeat, and a stale lock taken over only when asked."""

from __future__ import annotations

import time

import pytest
from etcd_fixture import Backend

from clonefleet.errors import LeaseLost
from clonefleet.rollout import lock
from clonefleet.rollout.lock import RolloutLocked
from clonefleet.state import FLEET_FACTS


def _wait_expired(backend: Backend) -> None:
    store = backend.open()
    deadline = time.monotonic() + 10  # etcd rounds a TTL up to its minimum (about 2 s)
    while store.lease(lock.LEASE) is not None:
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.1)


def test_second_taker_is_refused_naming_the_holder_and_since_when(backend: Backend) -> None:
    first = lock.take(backend.open(), user="ops", host="ctl-1", pid=4242,
                      clock=lambda: 1_800_000_000.0)
    try:
        with pytest.raises(RolloutLocked) as refused:
            lock.take(backend.open(), user="dev", host="ctl-2", pid=7)
        message = str(refused.value)
        assert message.startswith("another rollout is running: the rollout lock is held by "
                                  "ops@ctl-1 (pid 4242) since 2027-01-15 08:00:00 UTC")
        assert "\n" not in message
        assert refused.value.exit_code == 3
    finally:
        first.release()
    # Released cleanly: the next one takes it without any flag, and no takeover is recorded.
    second = lock.take(backend.open(), user="dev", host="ctl-2", pid=7)
    assert second.took_over is None and second.owner.generation == 2
    second.release()
    assert [step.step for step in backend.open().steps(FLEET_FACTS)] == []


def test_heartbeat_keeps_the_lock_past_its_ttl(backend: Backend) -> None:
    ttl = 2.0 if backend.name == "etcd" else 0.6
    held = lock.take(backend.open(), ttl=ttl)
    try:
        time.sleep(ttl * 2.5)
        assert held.lost is None
        held.check()
        owner, live = lock.current_owner(backend.open())
        assert live and owner is not None and owner.holder == held.owner.holder
        assert owner.heartbeat_at > owner.started_at
    finally:
        held.release()
    owner, live = lock.current_owner(backend.open())
    assert owner is None and not live


def test_stale_lock_needs_the_flag_and_its_takeover_is_recorded(backend: Backend) -> None:
    # A holder that died: its lease was never renewed and it never released.
    lock.take(backend.open(), ttl=1.0, heartbeat=False, user="ops", host="ctl-1", pid=11)
    _wait_expired(backend)
    with pytest.raises(RolloutLocked, match=r"^a rollout by ops@ctl-1 \(pid 11\) started .* "
                       r"stopped renewing its lock at .* UTC \(crashed or killed\?\); make sure "
                       r"it is not running, then pass --take-over-lock$"):
        lock.take(backend.open(), user="dev", host="ctl-2", pid=12)
    taken = lock.take(backend.open(), take_over=True, user="dev", host="ctl-2", pid=12)
    try:
        assert taken.took_over is not None and taken.took_over.pid == 11
        assert taken.owner.generation == 2
        steps = backend.open().steps(FLEET_FACTS)
        assert [step.step for step in steps] == [lock.TAKEOVER_STEP]
        assert steps[0].detail.startswith("dev@ctl-2 (pid 12) took over the stale lock of "
                                          "ops@ctl-1 (pid 11) since ")
    finally:
        taken.release()


def test_take_over_flag_never_takes_a_live_lock(backend: Backend) -> None:
    held = lock.take(backend.open(), user="ops", host="ctl-1", pid=1)
    try:
        with pytest.raises(RolloutLocked, match="another rollout is running"):
            lock.take(backend.open(), take_over=True)
    finally:
        held.release()


def test_a_holder_whose_lease_was_taken_over_knows_it_lost_the_lock(backend: Backend) -> None:
    ttl = 1.0
    first = lock.take(backend.open(), ttl=ttl, heartbeat=False, pid=1)
    _wait_expired(backend)
    second = lock.take(backend.open(), take_over=True, pid=2)
    try:
        with pytest.raises(LeaseLost):
            first.heartbeat()
        # The old holder's release leaves the new holder's lock alone.
        first.release()
        owner, live = lock.current_owner(backend.open())
        assert live and owner is not None and owner.pid == 2
    finally:
        second.release()


def test_heartbeat_that_finds_its_lease_gone_makes_check_fail(backend: Backend) -> None:
    ttl = 2.0 if backend.name == "etcd" else 0.6
    held = lock.take(backend.open(), ttl=ttl)
    backend.open().release_lease(lock.LEASE, held.owner.holder)  # as if it had expired
    deadline = time.monotonic() + ttl * 3
    while held.lost is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(LeaseLost, match="the rollout lock was lost"):
        held.check()
    held.release()
