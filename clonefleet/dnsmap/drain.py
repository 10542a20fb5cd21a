"""Drain and undrain: the state change, its safety rules, the push, and proof by DNS queries.

Sequence (after gdnsd's admin_state model): check the rules and mark the node `draining` in one
transaction → publish to every node → query every reachable server until none serves the
node's addresses → return. The `draining` → `drained` step, once the longest routed TTL plus
`fleet.dns_grace_seconds` has passed, is done by `settle()`, which every publish runs first and
`wait_until_drained()` runs when the time is up; nobody has to block for it.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from clonefleet.dnsmap.endpoints import Endpoint, Endpoints
from clonefleet.dnsmap.errors import DnsError, DrainNotConfirmed, DrainRefused
from clonefleet.dnsmap.model import DRAIN_STATES, UNKNOWN_STATE, build_map
from clonefleet.dnsmap.powerdns import ask
from clonefleet.dnsmap.publish import MAX_PARALLEL, PublishResult, publish, settle
from clonefleet.dnsmap.verify import ANYWHERE
from clonefleet.inventory import Fleet
from clonefleet.state import StateStore

POLL_SECONDS = 0.05


@dataclass
class DrainResult:
    node: str
    state: str  # the node's state when the call returned: draining, drained or active
    confirmed: list[str] = field(default_factory=list)  # servers whose answers now match
    unreachable: list[str] = field(default_factory=list)  # push or query failed
    errors: dict[str, str] = field(default_factory=dict)  # server → why it is unreachable
    serial: int | None = None
    changed: bool = True  # False when the node already was in the requested state
    clients_gone_at: float | None = None  # draining: when TTL + grace are over
    seconds: float = 0.0  # from the call to the last confirmation
    confirmed_after: dict[str, float] = field(default_factory=dict)  # server → seconds

    @property
    def ok(self) -> bool:
        return not self.unreachable


@dataclass(frozen=True)
class DrainPlan:
    """What a drain would do; `refusals` empty means allowed (with `force`, overridden)."""

    node: str
    from_state: str
    active_after: int
    region_active_after: int
    refusals: list[str]


def plan_drain(fleet: Fleet, store: StateStore, node: str, *, reason: str,
               force: bool = False) -> DrainPlan:
    """Given the current states, say whether draining `node` is allowed. Raises nothing;
    call inside `store.transaction()` for a decision that holds until the write."""
    target = fleet.node(node)
    region = fleet.regions[target.region]
    dns_map = build_map(fleet, store)
    state = dns_map.node(node).state
    refusals = []
    if not reason.strip():
        refusals.append("a drain needs a reason; pass --reason TEXT")
    if state not in ("active", *DRAIN_STATES):
        refusals.append(f"node {node!r} is {state}, not active; only an active node is in DNS "
                        "and can be drained")
    active = [entry for entry in dns_map.active if entry.name != node]
    in_region = [entry for entry in active if entry.region == region.name]
    if state == "active" and not force:
        if len(in_region) < region.min_active:
            refusals.append(
                f"draining {node!r} would leave region {region.name!r} with {len(in_region)} "
                f"active node(s), below its min_active = {region.min_active}; "
                "use --force to drain anyway")
        if len(active) < fleet.min_active_total:
            refusals.append(
                f"draining {node!r} would leave the fleet with {len(active)} active node(s), "
                f"below min_active_total = {fleet.min_active_total}; use --force to drain anyway")
    return DrainPlan(node, state, len(active), len(in_region), refusals)


# A freshly provisioned node enters DNS the same way a drained one returns: through undrain,
# with the same health rule.
UNDRAIN_FROM = ("deployed", *DRAIN_STATES)


def plan_undrain(fleet: Fleet, store: StateStore, node: str, *,
                 force: bool = False) -> tuple[str, list[str]]:
    """Given the current state and health record, return (state, reasons to refuse)."""
    record = store.get(fleet.node(node).name)
    state = record.state if record else UNKNOWN_STATE
    refusals = []
    if state not in ("active", *UNDRAIN_FROM):
        refusals.append(f"it is {state}, not deployed, draining or drained; provision it "
                        "first (`clonefleet provision NODE`)")
    elif state != "active":
        checks = store.health(node, limit=1)
        if checks and not checks[0].ok and not force:
            check = checks[0]
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(check.at))
            refusals.append(f"its last health check failed ({when} UTC, by {check.source}: "
                            f"{check.detail or 'no detail'}); record a passing check first "
                            "or use --force")
    return state, refusals


def _addresses(fleet: Fleet, node: str) -> frozenset[str]:
    target = fleet.node(node)
    return frozenset(str(ipaddress.ip_address(address))
                     for address in (target.ipv4, target.ipv6) if address)


def _serves(endpoint: Endpoint, names: list[str], addresses: frozenset[str],
            timeout: float) -> bool:
    """Whether the server's full answer (unknown client location) for any routed name contains
    one of `addresses`. That answer lists every candidate `pickclosest` chooses from, so a node
    absent from it is absent from every geo answer too."""
    for name in names:
        for kind, client in (("A", ANYWHERE), ("AAAA", "::/0")):
            answer = ask(endpoint, name, kind, client=client, timeout=timeout)
            served = {str(ipaddress.ip_address(address)) for address in answer.addresses}
            if served & addresses:
                return True
    return False


def _confirm(fleet: Fleet, node: str, endpoints: Endpoints, published: PublishResult,
             want_served: bool, started: float, deadline: float, result: DrainResult,
             clock: Callable[[], float]) -> list[str]:
    """Poll the servers that took the push until each answers as wanted. Fills `result`;
    returns the servers still answering the old way at the deadline."""
    names = [f"{entry.name}.{fleet.domain}." for entry in fleet.routed]
    addresses = _addresses(fleet, node)
    for server, error in published.unreachable.items():
        result.unreachable.append(server)
        result.errors[server] = error
    pending = [endpoints[server] for server in published.pushed]
    if not names or not addresses:
        # Nothing routed or no address: no answer can contain the node.
        result.confirmed.extend(endpoint.node for endpoint in pending)
        return []

    def settled(endpoint: Endpoint) -> bool | str:
        remaining = max(0.2, min(2.0, deadline - clock()))
        try:
            return _serves(endpoint, names, addresses, remaining) == want_served
        except DnsError as error:
            return str(error)

    while pending:
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(pending))) as pool:
            outcomes = list(pool.map(settled, pending))
        still = []
        for endpoint, outcome in zip(pending, outcomes, strict=True):
            if outcome is True:
                result.confirmed.append(endpoint.node)
                result.confirmed_after[endpoint.node] = clock() - started
            elif isinstance(outcome, str):
                result.unreachable.append(endpoint.node)
                result.errors[endpoint.node] = outcome
            else:
                still.append(endpoint)
        pending = still
        if not pending or clock() >= deadline:
            break
        time.sleep(POLL_SECONDS)
    result.confirmed.sort()
    result.unreachable.sort()
    return [endpoint.node for endpoint in pending]


def drain_node(fleet: Fleet, store: StateStore, node: str, *, reason: str, actor: str,
               force: bool = False, endpoints: Endpoints | None = None,
               timeout: float = 60.0) -> DrainResult:
    """Given a node, take it out of every DNS answer and return once every reachable server
    has stopped serving it (checked with real DNS queries).

    Raises `DrainRefused` when a safety rule refuses (no reason; the node is not active; the
    region or the fleet would fall below its minimum of active nodes, unless `force`), and
    `DrainNotConfirmed` when a reachable server still serves the node after `timeout` seconds.
    Unreachable servers are listed in the result; the next publish catches them up.
    Draining a node that is already draining or drained changes nothing but republishes.
    """
    started = time.monotonic()
    deadline = started + timeout
    with store.transaction():
        plan = plan_drain(fleet, store, node, reason=reason, force=force)
        if plan.refusals:
            raise DrainRefused(f"drain of {node!r} refused: {'; '.join(plan.refusals)}")
        changed = plan.from_state == "active"
        if changed:
            suffix = " (forced below minimum)" if force and _below_minimum(plan, fleet, node) \
                else ""
            store.transition(node, "draining", actor=actor, reason=reason.strip() + suffix,
                             expect_from=["active"])
    return _publish_and_confirm(fleet, store, node, endpoints, actor=actor, want_served=False,
                                changed=changed, started=started, deadline=deadline)


def _below_minimum(plan: DrainPlan, fleet: Fleet, node: str) -> bool:
    region = fleet.regions[fleet.node(node).region]
    return (plan.region_active_after < region.min_active
            or plan.active_after < fleet.min_active_total)


def undrain_node(fleet: Fleet, store: StateStore, node: str, *, actor: str, reason: str = "",
                 force: bool = False, endpoints: Endpoints | None = None,
                 timeout: float = 60.0) -> DrainResult:
    """Given a draining or drained node, put it back into DNS and return once every reachable
    server serves it again.

    Refuses (`DrainRefused`) a node whose last recorded health check failed, unless `force`,
    and a node that is neither draining, drained nor active. Undraining an active node changes
    nothing but republishes.
    """
    started = time.monotonic()
    deadline = started + timeout
    with store.transaction():
        state, refusals = plan_undrain(fleet, store, node, force=force)
        if refusals:
            raise DrainRefused(f"undrain of {node!r} refused: {'; '.join(refusals)}")
        changed = state != "active"
        if changed:
            store.transition(node, "active", actor=actor,
                             reason=reason.strip() or f"undrained (was {state})",
                             expect_from=list(UNDRAIN_FROM))
    return _publish_and_confirm(fleet, store, node, endpoints, actor=actor, want_served=True,
                                changed=changed, started=started, deadline=deadline)


def _publish_and_confirm(fleet: Fleet, store: StateStore, node: str,
                         endpoints: Endpoints | None, *, actor: str, want_served: bool,
                         changed: bool, started: float, deadline: float) -> DrainResult:
    endpoints = Endpoints.from_store(fleet, store) if endpoints is None else endpoints
    # Each HTTP call gets at most a slice of the budget, so one hung server cannot use it all.
    call_timeout = max(0.5, min(10.0, (deadline - time.monotonic()) / 3))
    published = publish(fleet, store, endpoints, actor=actor, timeout=call_timeout)
    record = store.get(node)
    state = record.state if record else UNKNOWN_STATE
    result = DrainResult(node=node, state=state, serial=published.serial, changed=changed)
    if state == "draining" and record is not None:
        wait = max((entry.ttl for entry in fleet.routed), default=0) + fleet.dns_grace_seconds
        result.clients_gone_at = record.since + wait
    lagging = _confirm(fleet, node, endpoints, published, want_served, started, deadline,
                       result, time.monotonic)
    result.seconds = time.monotonic() - started
    if lagging:
        verb = "still serves" if not want_served else "does not serve yet"
        raise DrainNotConfirmed(
            f"{'drain' if not want_served else 'undrain'} of {node!r} recorded and published "
            f"(serial {published.serial}), but after {result.seconds:.1f} s DNS on "
            f"{', '.join(lagging)} {verb} it; run `clonefleet dns verify`", result)
    return result


def wait_until_drained(fleet: Fleet, store: StateStore, node: str, *, timeout: float = 600.0,
                       sleep: Callable[[float], None] = time.sleep,
                       clock: Callable[[], float] = time.time) -> str:
    """Block until `node`'s TTL + grace period is over, promote it to drained, return its state.

    For callers (rollout) that must not touch the node while clients may still use it.
    `sleep` and `clock` are injectable so tests never really wait.
    """
    deadline = clock() + timeout
    wait = max((entry.ttl for entry in fleet.routed), default=0) + fleet.dns_grace_seconds
    while True:
        record = store.get(node)
        if record is None or record.state != "draining":
            return record.state if record else UNKNOWN_STATE
        due = record.since + wait
        if clock() >= due:
            settle(fleet, store, now=clock())
            continue
        if due > deadline:
            raise DnsError(f"node {node!r} becomes drained at "
                           f"{time.strftime('%H:%M:%S', time.gmtime(due))} UTC, after the "
                           f"{timeout:.0f} s timeout; wait longer")
        sleep(min(1.0, due - clock()))


def record_health(store: StateStore, node: str, ok: bool, *, source: str,
                  detail: str = "") -> None:
    """Record a health check result for `node` (undrain refuses after a failed one)."""
    store.record_health(node, ok, source=source, detail=detail)
