"""One rollout at a time: a fleet-wide lock on a lease of the state store, kept by a heartbeat.

The lease (`rollout`) says the lock is held *now*: its holder renews it from a thread every
third of its time to live. A record beside it (fleet fact `rollout_lock`: owner user@host,
pid, start time, last heartbeat, a generation number) says who holds it and since when; it is
deleted only by a clean release. So there are three cases for a taker:
- a live lease: refused, naming the holder and since when;
- no lease but a record left behind (its holder crashed or was killed, the lease expired):
  a stale lock, taken over only with an explicit flag; the takeover is recorded as a step of
  the fleet (`rollout-lock-takeover`) naming the previous holder;
- neither: taken.
Takers go one at a time through the store's short `rollout-lock` mutex, so two takers of a
stale lock cannot both win. Each take increments the generation (a fencing token): whoever
acts for a rollout checks `RolloutLock.check()` first, which fails once the lease was lost.
"""

from __future__ import annotations

import getpass
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from clonefleet.errors import ClonefleetError, LeaseLost, StateError
from clonefleet.state import FLEET_FACTS, StateStore

LEASE = "rollout"
MUTEX = "rollout-lock"
RECORD = "rollout_lock"  # fleet fact: who holds the lock, since when
TAKEOVER_STEP = "rollout-lock-takeover"
DEFAULT_TTL = 30.0
# The option a stale lock's refusal names (the rollout command that runs updates takes it).
TAKE_OVER_FLAG = "--take-over-lock"


class RolloutLocked(ClonefleetError):
    """Another rollout holds the fleet's rollout lock, or left it behind (stale)."""

    exit_code = 3


@dataclass(frozen=True)
class LockOwner:
    user: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    generation: int

    @property
    def holder(self) -> str:
        """The lease holder's name: unique per process and take."""
        return f"{self.user}@{self.host}:{self.pid}:{self.generation}"

    def describe(self, now: float) -> str:
        return (f"{self.user}@{self.host} (pid {self.pid}) since {_when(self.started_at)} UTC, "
                f"last heartbeat {max(0.0, now - self.heartbeat_at):.0f} s ago")

    @classmethod
    def from_fact(cls, value: Any) -> LockOwner | None:
        try:
            return cls(str(value["user"]), str(value["host"]), int(value["pid"]),
                       float(value["started_at"]), float(value["heartbeat_at"]),
                       int(value["generation"]))
        except (TypeError, KeyError, ValueError):
            return None


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


def current_owner(store: StateStore) -> tuple[LockOwner | None, bool]:
    """Who holds (or last held) the rollout lock, and whether the lock is live."""
    owner = LockOwner.from_fact(store.get_fact(FLEET_FACTS, RECORD))
    return owner, store.lease(LEASE) is not None


class RolloutLock:
    """The taken lock. Use as a context manager (released on exit) or `release()` it."""

    def __init__(self, store: StateStore, owner: LockOwner, ttl: float,
                 clock: Callable[[], float], took_over: LockOwner | None) -> None:
        self.store = store
        self.owner = owner
        self.ttl = ttl
        self.clock = clock
        self.took_over = took_over
        self.lost: str | None = None  # why the heartbeat stopped, when it did
        self.last_error: str | None = None  # the store's latest failure to renew (retried)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        name="clonefleet-rollout-lock")

    def start(self) -> RolloutLock:
        self._thread.start()
        return self

    def heartbeat(self) -> None:
        """Renew the lease and record the heartbeat; LeaseLost when it was lost."""
        self.store.renew_lease(LEASE, self.owner.holder)
        self.owner = LockOwner(**{**asdict(self.owner), "heartbeat_at": self.clock()})
        self.store.set_fact(FLEET_FACTS, RECORD, asdict(self.owner))

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.heartbeat()
            except LeaseLost as error:
                self.lost = str(error)
                return
            except StateError as error:  # the store did not answer: try again next beat
                self.last_error = str(error)

    def check(self) -> None:
        """Raise LeaseLost when this process no longer holds the lock (before any step)."""
        if self.lost is not None:
            raise LeaseLost(f"the rollout lock was lost ({self.lost}); stop and run "
                            "`clonefleet update` again")

    def release(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.ttl)
        with self.store.lock(MUTEX):
            record = LockOwner.from_fact(self.store.get_fact(FLEET_FACTS, RECORD))
            if record is not None and record.holder == self.owner.holder:
                self.store.delete_fact(FLEET_FACTS, RECORD)
            self.store.release_lease(LEASE, self.owner.holder)

    def __enter__(self) -> RolloutLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def take(store: StateStore, *, take_over: bool = False, ttl: float = DEFAULT_TTL,
         clock: Callable[[], float] = time.time, user: str | None = None,
         host: str | None = None, pid: int | None = None,
         heartbeat: bool = True) -> RolloutLock:
    """Take the fleet's rollout lock (and start its heartbeat unless `heartbeat` is False).

    Raises `RolloutLocked` when another rollout holds it, or left it behind and `take_over`
    was not given; a takeover is recorded as a fleet step naming the previous holder."""
    user = user or getpass.getuser()
    host = host or socket.gethostname()
    pid = os.getpid() if pid is None else pid
    with store.lock(MUTEX):
        previous, live = current_owner(store)
        now = clock()
        if live:
            lease = store.lease(LEASE)
            holder = previous.describe(now) if previous and lease and \
                lease.holder == previous.holder else repr(lease.holder if lease else "?")
            raise RolloutLocked(f"another rollout is running: the rollout lock is held by "
                                f"{holder}; wait for it to finish")
        if previous is not None and not take_over:
            raise RolloutLocked(
                f"a rollout by {previous.user}@{previous.host} (pid {previous.pid}) started "
                f"{_when(previous.started_at)} UTC stopped renewing its lock at "
                f"{_when(previous.heartbeat_at)} UTC (crashed or killed?); make sure it is "
                f"not running, then pass {TAKE_OVER_FLAG}")
        generation = (previous.generation if previous else
                      int(store.get_fact(FLEET_FACTS, "rollout_lock_generation", 0))) + 1
        owner = LockOwner(user, host, pid, now, now, generation)
        store.take_lease(LEASE, owner.holder, ttl)
        store.set_fact(FLEET_FACTS, RECORD, asdict(owner))
        store.set_fact(FLEET_FACTS, "rollout_lock_generation", generation)
        if previous is not None:
            store.record_step(FLEET_FACTS, TAKEOVER_STEP, "done", 0.0,
                              detail=f"{user}@{host} (pid {pid}) took over the stale lock of "
                                     f"{previous.describe(now)}")
    lock = RolloutLock(store, owner, ttl, clock, previous)
    return lock.start() if heartbeat else lock
