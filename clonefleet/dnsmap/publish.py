"""Push the DNS map to every node's PowerDNS, in parallel, with a new SOA serial each time."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from clonefleet.dnsmap.endpoints import Endpoint, Endpoints
from clonefleet.dnsmap.errors import DnsError
from clonefleet.dnsmap.model import build_map
from clonefleet.dnsmap.powerdns import push_zone
from clonefleet.dnsmap.zone import RRset, render_rrsets
from clonefleet.errors import ConfigError, StateError
from clonefleet.inventory import Fleet
from clonefleet.state import StateStore, lifecycle

PUBLISH_LOCK = "dns-publish"
# The lock covers reading states and allocating a serial only (milliseconds), never network
# calls, so a wait this long means a stuck process, not a slow server.
LOCK_SECONDS = 30.0
# Default budget for one server's part of a publish (lock wait, read, change, cache flush) and
# for each DNS query: a healthy server answers in milliseconds, a distant one over TLS in well
# under a second per call; a hung one is named unreachable after this, once.
SERVER_SECONDS = 5.0
# Enough threads that 30 servers are pushed in one wave, few enough for a 2-core controller.
MAX_PARALLEL = 32


@dataclass
class PublishResult:
    zone: str
    serial: int | None  # None on a dry run: nothing was allocated
    pushed: list[str] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)  # node → error
    unconfigured: list[str] = field(default_factory=list)  # nodes without a dns_endpoint
    settled: list[str] = field(default_factory=list)  # draining → drained in this run
    rrsets: list[RRset] = field(default_factory=list)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.unreachable


def settle(fleet: Fleet, store: StateStore, *, now: float | None = None) -> list[str]:
    """Promote `draining` nodes whose max TTL + grace period is over to `drained`.

    The drained record keeps the original drain's actor and reason: `drained` answers who
    drained the node and why, and `since` then says when clients were gone. Returns the nodes
    promoted.
    """
    now = time.time() if now is None else now
    wait = max((entry.ttl for entry in fleet.routed), default=0) + fleet.dns_grace_seconds
    promoted = []
    with store.transaction():
        for record in store.all():
            if record.state != "draining" or record.name not in fleet.nodes:
                continue
            if record.since + wait <= now:
                store.apply(record.name, lifecycle.SETTLE, actor=record.actor,
                            reason=record.reason)
                promoted.append(record.name)
    return promoted


def positive_seconds(value: float, what: str) -> float:
    """Refuse a zero or negative time limit up front (it would fail every server at once)."""
    if not value > 0:
        raise ConfigError(f"{what} must be more than 0 seconds, got {value:g}; "
                          "pass a positive number of seconds")
    return value


@dataclass(frozen=True)
class Publication:
    """One allocated serial and the zone rendered from the states read under the lock."""

    zone: str
    serial: int
    rrsets: list[RRset]
    settled: list[str]


def prepare(fleet: Fleet, store: StateStore, *, actor: str,
            now: float | None = None) -> Publication:
    """Settle, read the states, allocate a serial and render: the only part done under the
    `dns-publish` lock, so the lock is never held while servers are waited on. Serials are
    allocated in the order the states were read, so a higher serial always carries a map that
    includes every change recorded before a lower one."""
    with store.lock(PUBLISH_LOCK, timeout=LOCK_SECONDS):
        settled = settle(fleet, store, now=now)
        dns_map = build_map(fleet, store)
        active = ",".join(node.name for node in dns_map.active)
        serial = store.next_dns_serial(actor, summary=f"active: {active}")
        return Publication(dns_map.domain, serial, render_rrsets(dns_map, serial), settled)


def push_one(store: StateStore, endpoint: Endpoint, publication: Publication,
             deadline: float) -> int:
    """Push `publication` to one server before `deadline` (time.monotonic()); return the
    serial it holds afterwards. Raises `DnsError` naming the server.

    Pushes to one server are serialized across processes by a per-server lock, so two
    publishes cannot land out of order there (the older one would find the newer serial and
    leave it); a hung server therefore only ever holds up pushes to itself.
    """
    try:
        with store.lock(f"dns-push-{endpoint.node}",
                        timeout=max(0.0, deadline - time.monotonic())):
            return push_zone(endpoint, publication.zone, publication.rrsets, publication.serial,
                             deadline, lambda held: held <= (store.last_dns_serial() or 0))
    except StateError:
        raise DnsError(f"{endpoint.node}: an earlier push to this server was still running at "
                       "its deadline (the server may be hung)") from None


def push_all(store: StateStore, endpoints: list[Endpoint], publication: Publication,
             timeout: float) -> dict[str, tuple[int | None, str]]:
    """Push to every endpoint at once, each within its own `timeout`;
    node → (serial it holds, "") or (None, error)."""

    def push(endpoint: Endpoint) -> tuple[int | None, str]:
        try:
            return push_one(store, endpoint, publication, time.monotonic() + timeout), ""
        except DnsError as error:
            return None, str(error)

    if not endpoints:
        return {}
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(endpoints))) as pool:
        outcomes = list(pool.map(push, endpoints))
    return {endpoint.node: outcome for endpoint, outcome in zip(endpoints, outcomes, strict=True)}


def record_push(store: StateStore, node: str, serial: int | None, error: str,
                publication: Publication) -> None:
    """Remember per server what it holds (shown by `dns show`)."""
    store.record_dns_server(node, serial if serial is not None else publication.serial,
                            not error, error)


def publish(
    fleet: Fleet,
    store: StateStore,
    endpoints: Endpoints | None = None,
    *,
    actor: str,
    dry_run: bool = False,
    timeout: float = SERVER_SECONDS,
    now: float | None = None,
) -> PublishResult:
    """Given the fleet and states, push the zone to every node with an endpoint.

    The states are read and the serial allocated under a lock (see `prepare`); the pushes
    then run in parallel outside it, each server within its own `timeout` seconds (lock wait,
    read, change and cache flush together), so a hung server costs its `timeout` once and
    delays nobody else. Every push sends the whole zone, so a server that missed earlier
    publishes (down, unreachable) is caught up by the next one.
    """
    positive_seconds(timeout, "the per-server timeout")
    endpoints = Endpoints.from_store(fleet, store) if endpoints is None else endpoints
    unconfigured = sorted(set(fleet.nodes) - set(endpoints))
    if dry_run:
        dns_map = build_map(fleet, store)
        preview = (store.last_dns_serial() or 0) + 1
        return PublishResult(zone=dns_map.domain, serial=None, unconfigured=unconfigured,
                             rrsets=render_rrsets(dns_map, preview), dry_run=True)
    publication = prepare(fleet, store, actor=actor, now=now)
    targets = [endpoints[name] for name in sorted(endpoints)]
    outcomes = push_all(store, targets, publication, timeout)
    result = PublishResult(zone=publication.zone, serial=publication.serial,
                           unconfigured=unconfigured, settled=publication.settled,
                           rrsets=publication.rrsets)
    for node, (serial, error) in sorted(outcomes.items()):
        record_push(store, node, serial, error, publication)
        if error:
            result.unreachable[node] = error
        else:
            result.pushed.append(node)
    return result
