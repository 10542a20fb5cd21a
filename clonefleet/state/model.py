"""What the state store records, and the protocol every backend implements."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

# A node's life. `draining`/`drained` sit beside `active`; `retired` is terminal.
LIFECYCLE = (
    "ordered",
    "rescue",
    "installed",
    "locked",
    "booted",
    "deployed",
    "active",
    "draining",
    "drained",
    "retired",
)

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


class StateStore(Protocol):
    def get(self, node: str) -> NodeRecord | None: ...

    def all(self) -> list[NodeRecord]: ...

    def transition(
        self,
        node: str,
        to_state: str,
        *,
        actor: str,
        reason: str = "",
        expect_from: Iterable[str | None] | None = None,
    ) -> NodeRecord: ...

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

    def transaction(self) -> AbstractContextManager[None]: ...

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


