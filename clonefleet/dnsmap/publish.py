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
from clonefleet.inventory import Fleet
from clonefleet.state import StateStore

PUBLISH_LOCK = "dns-publish"
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
                store.transition(record.name, "drained", actor=record.actor,
                                 reason=record.reason, expect_from=["draining"])
                promoted.append(record.name)
    return promoted


def _push_all(endpoints: list[Endpoint], zone: str, rrsets: list[RRset],
              timeout: float) -> dict[str, str | None]:
    """Push to every endpoint at once; node → error text, or None when it took the zone."""

    def push(endpoint: Endpoint) -> str | None:
        try:
            push_zone(endpoint, zone, rrsets, timeout)
        except DnsError as error:
            return str(error)
        return None

    if not endpoints:
        return {}
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(endpoints))) as pool:
        outcomes = list(pool.map(push, endpoints))
    return {endpoint.node: outcome for endpoint, outcome in zip(endpoints, outcomes, strict=True)}


def publish(
    fleet: Fleet,
    store: StateStore,
    endpoints: Endpoints | None = None,
    *,
    actor: str,
    dry_run: bool = False,
    timeout: float = 10.0,
    now: float | None = None,
) -> PublishResult:
    """Given the fleet and states, push the zone to every node with an endpoint.

    Publishes run one at a time across processes (a lock in the state store), and each one
    reads the states after taking the lock: two concurrent drains can never leave a server with
    the older map. Every push sends the whole zone, so a server that missed earlier publishes
    (down, unreachable) is caught up by the next one. `timeout` bounds each HTTP call.
    """
    endpoints = Endpoints.from_store(fleet, store) if endpoints is None else endpoints
    unconfigured = sorted(set(fleet.nodes) - set(endpoints))
    if dry_run:
        dns_map = build_map(fleet, store)
        zone = dns_map.domain
        preview = (store.last_dns_serial() or 0) + 1
        return PublishResult(zone=zone, serial=None, unconfigured=unconfigured,
                             rrsets=render_rrsets(dns_map, preview), dry_run=True)
    with store.lock(PUBLISH_LOCK, timeout=max(60.0, timeout * 3)):
        settled = settle(fleet, store, now=now)
        dns_map = build_map(fleet, store)
        zone = dns_map.domain
        active = ",".join(node.name for node in dns_map.active)
        serial = store.next_dns_serial(actor, summary=f"active: {active}")
        rrsets = render_rrsets(dns_map, serial)
        targets = [endpoints[name] for name in sorted(endpoints)]
        outcomes = _push_all(targets, zone, rrsets, timeout)
        result = PublishResult(zone=zone, serial=serial, unconfigured=unconfigured,
                               settled=settled, rrsets=rrsets)
        for node, error in sorted(outcomes.items()):
            store.record_dns_server(node, serial, error is None, error or "")
            if error is None:
                result.pushed.append(node)
            else:
                result.unreachable[node] = error
        return result
