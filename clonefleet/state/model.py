"""What the state store records, and the protocol every backend implements."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from clonefleet.state.lifecycle import STATES, NamedTransition, check_state

# A node's life: the states of the one transition table (`clonefleet.state.lifecycle`).
LIFECYCLE = STATES

# Facts about the fleet as a whole (e.g. the last `dns verify`) are kept under this name: node
# names are DNS labels, so none can start with "@" and collide with it.
FLEET_FACTS = "@fleet"


@dataclass(frozen=True)
class NodeRecord:
    name: str
    state: str
    since: float
    actor: str
    reason: str


@dataclass(frozen=True)
class Transition:
    id: int
    node: str
    from_state: str | None
    to_state: str
    actor: str
    reason: str
    at: float


@dataclass(frozen=True)
class StepRecord:
    node: str
    step: str
    status: str  # "done" | "failed"
    seconds: float
    at: float
    detail: str


@dataclass(frozen=True)
class HealthCheck:
    node: str
    ok: bool
    source: str  # who or what checked, e.g. "smartwatch", "rollout", "operator"
    detail: str
    at: float


@dataclass(frozen=True)
class DnsServerRecord:
    """Outcome of the latest push of the DNS map to one node's PowerDNS."""

    node: str
    serial: int | None  # the last serial that server accepted
    ok: bool
    error: str
    at: float


@dataclass(frozen=True)
class Lease:
    """A named claim with a time to live, e.g. "I unlock this boot of this node".

    Taking a lease another holder has not released and that has not expired fails
    (`LeaseHeld`); the holder renews it before `expires_at`, or loses it (`LeaseLost`).
    `expires_at` is this host's clock (time.time()) plus the TTL when taken or renewed.
    """

    name: str
    holder: str
    ttl: float
    expires_at: float


# Lock and lease names become file names (SQLite locks) and etcd key segments.
NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def check_name(name: str, what: str) -> str:
    """Refuse a lock or lease name that is empty or has characters other than letters,
    digits and '-', '_', '.', ':' (a '/' would reach into another key's space)."""
    from clonefleet.errors import StateError

    if not name or not set(name) <= NAME_CHARACTERS or name.startswith("."):
        raise StateError(f"invalid {what} name {name!r}; use letters, digits and '-', '_', "
                         "'.', ':' (not starting with '.')")
    return name


# Given the node's current state (None: not recorded), raise to refuse the write.
StateCheck = Callable[[str | None], None]


class LifecycleWrites:
    """`apply` and `set_state`, written once for every backend on top of its one atomic
    primitive `_write_state`: read the node's state, run the check on it, write the new state
    and its history record, all in one atomic step (SQLite: one transaction; etcd: one
    transaction guarded by the node key's revision, re-run while another writer wins)."""

    def _write_state(self, node: str, to_state: str, *, actor: str, reason: str,
                     check: StateCheck | None) -> NodeRecord:
        raise NotImplementedError

    def apply(
        self, node: str, transition: NamedTransition, *, actor: str, reason: str = ""
    ) -> NodeRecord:
        def check(current: str | None) -> None:
            transition.check(node, current)

        return self._write_state(node, transition.to, actor=actor, reason=reason, check=check)

    def set_state(self, node: str, state: str, *, actor: str, reason: str = "") -> NodeRecord:
        return self._write_state(node, check_state(state), actor=actor, reason=reason,
                                 check=None)


class StateStore(Protocol):
    def get(self, node: str) -> NodeRecord | None: ...

    def all(self) -> list[NodeRecord]: ...

    def apply(
        self, node: str, transition: NamedTransition, *, actor: str, reason: str = ""
    ) -> NodeRecord:
        """Move `node` along `transition` (e.g. `lifecycle.DRAIN`), recording who and why;
        `StateError` if its current state is not one the transition starts from."""
        ...

    def set_state(self, node: str, state: str, *, actor: str, reason: str = "") -> NodeRecord:
        """Record `state` whatever the node's state is: for test setup and repairs only."""
        ...

    def history(self, node: str | None = None) -> list[Transition]: ...

    def set_fact(self, node: str, key: str, value: Any) -> None: ...

    def get_fact(self, node: str, key: str, default: Any = None) -> Any: ...

    def facts(self, node: str) -> dict[str, Any]: ...

    def fact_values(self, key: str) -> dict[str, Any]: ...

    def delete_fact(self, node: str, key: str) -> None: ...

    def delete_facts(self, node: str) -> None: ...

    def record_step(
        self, node: str, step: str, status: str, seconds: float, detail: str = ""
    ) -> None: ...

    def steps(self, node: str) -> list[StepRecord]: ...

    def transaction(self) -> AbstractContextManager[None]:
        """Reads and writes inside the block are one atomic unit; nested blocks join the outer.

        SQLite: an IMMEDIATE transaction (writers wait for each other). etcd: writers' blocks
        wait for each other too (a store-wide lock), the writes are buffered and committed in
        one etcd transaction guarded by the revisions of everything read; if a write from
        outside any block changed one of those meanwhile, nothing is written and
        `StateConflict` is raised (docs/state.md).
        """
        ...

    def record_health(
        self, node: str, ok: bool, *, source: str, detail: str = ""
    ) -> HealthCheck: ...

    def health(self, node: str, limit: int = 1) -> list[HealthCheck]: ...

    def next_dns_serial(self, actor: str, summary: str = "") -> int: ...

    def last_dns_serial(self) -> int | None: ...

    def record_dns_server(
        self, node: str, serial: int | None, ok: bool, error: str = ""
    ) -> None: ...

    def dns_servers(self) -> list[DnsServerRecord]: ...

    def lock(self, name: str, timeout: float = 60.0) -> AbstractContextManager[None]: ...

    def take_lease(self, name: str, holder: str, ttl: float) -> Lease: ...

    def renew_lease(self, name: str, holder: str) -> Lease: ...

    def release_lease(self, name: str, holder: str) -> bool: ...

    def lease(self, name: str) -> Lease | None: ...

    def close(self) -> None: ...


