"""Drain and undrain: the state change, its safety rules, the push, and proof by DNS queries.

Sequence (after gdnsd's admin_state model): check the rules and mark the node `draining` in one
transaction → allocate a serial and render the zone (under the publish lock, briefly) → per
server, in parallel and each within its own deadline: push, then query it until it no longer
serves the node's addresses → return. A hung server is named unreachable after its deadline
and holds up nobody else. The `draining` → `drained` step, once the longest routed TTL plus
`fleet.dns_grace_seconds` has passed, is done by `settle()`, which every publish runs first and
`wait_until_drained()` runs when the time is up; nobody has to block for it.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from clonefleet.dnsmap.endpoints import Endpoint, Endpoints
from clonefleet.dnsmap.errors import DnsError, DrainNotConfirmed, DrainRefused
from clonefleet.dnsmap.model import DRAIN_STATES, UNKNOWN_STATE, build_map
from clonefleet.dnsmap.powerdns import ask, preload_dns
from clonefleet.dnsmap.publish import (
    MAX_PARALLEL,
    SERVER_SECONDS,
    Publication,
    positive_seconds,
    prepare,
    push_one,
    record_push,
    settle,
)
from clonefleet.dnsmap.verify import ANYWHERE
from clonefleet.inventory import Fleet
from clonefleet.state import StateStore, lifecycle

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
    seconds: float = 0.0  # from the call to the last confirmation (unreachable ones excluded)
    elapsed: float = 0.0  # from the call to its return, waiting on unreachable servers included
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
UNDRAIN_FROM = lifecycle.ACTIVATE.from_states | lifecycle.UNDRAIN.from_states


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
            deadline: float, server_timeout: float) -> bool:
    """Whether the server's full answer (unknown client location) for any routed name contains
    one of `addresses`. That answer lists every candidate the LUA program chooses from, so a
    node absent from it is absent from every geo answer too."""
    for name in names:
        for kind, client in (("A", ANYWHERE), ("AAAA", "::/0")):
            timeout = min(server_timeout, deadline - time.monotonic())
            answer = ask(endpoint, name, kind, client=client, timeout=timeout)
            served = {str(ipaddress.ip_address(address)) for address in answer.addresses}
            if served & addresses:
                return True
    return False


@dataclass(frozen=True)
class _ServerOutcome:
    serial: int | None = None  # what the server holds after the push; None if it failed
    error: str = ""  # why it is unreachable
    confirmed_after: float | None = None  # seconds from the call; None if not confirmed


def _push_and_confirm(store: StateStore, endpoint: Endpoint, publication: Publication,
                      names: list[str], addresses: frozenset[str], want_served: bool,
                      started: float, deadline: float,
                      server_timeout: float) -> _ServerOutcome:
    """One server's whole part, in its own thread: push, then poll its DNS until it answers as
    wanted or `deadline`. A silent server fails its first call after `server_timeout` and is
    given up at once, so it costs that time once and never holds up the others."""
    try:
        serial = push_one(store, endpoint, publication,
                          min(deadline, time.monotonic() + server_timeout))
    except DnsError as error:
        return _ServerOutcome(error=str(error))
    if not names or not addresses:
        # Nothing routed or no address: no answer can contain the node.
        return _ServerOutcome(serial, confirmed_after=time.monotonic() - started)
    while True:
        try:
            served = _serves(endpoint, names, addresses, deadline, server_timeout)
        except DnsError as error:
            return _ServerOutcome(serial, error=str(error))
        if served == want_served:
            return _ServerOutcome(serial, confirmed_after=time.monotonic() - started)
        if time.monotonic() + POLL_SECONDS >= deadline:
            return _ServerOutcome(serial)
        time.sleep(POLL_SECONDS)


def drain_node(fleet: Fleet, store: StateStore, node: str, *, reason: str, actor: str,
               force: bool = False, endpoints: Endpoints | None = None,
               timeout: float = 60.0, server_timeout: float = SERVER_SECONDS) -> DrainResult:
    """Given a node, take it out of every DNS answer and return once every reachable server
    has stopped serving it (checked with real DNS queries).

    Raises `DrainRefused` when a safety rule refuses (no reason; the node is not active; the
    region or the fleet would fall below its minimum of active nodes, unless `force`), and
    `DrainNotConfirmed` when a reachable server still serves the node after `timeout` seconds.
    Unreachable servers (no answer within `server_timeout` seconds per call) are listed in the
    result; the next publish catches them up. Endpoints and time limits are checked before the
    state changes.
    Draining a node that is already draining or drained changes nothing but republishes.
    """
    started = time.monotonic()
    preload_dns()
    deadline = started + positive_seconds(timeout, "the timeout")
    positive_seconds(server_timeout, "the per-server timeout")
    fleet.node(node)
    endpoints = Endpoints.from_store(fleet, store) if endpoints is None else endpoints
    with store.transaction():
        plan = plan_drain(fleet, store, node, reason=reason, force=force)
        if plan.refusals:
            raise DrainRefused(f"drain of {node!r} refused: {'; '.join(plan.refusals)}")
        changed = plan.from_state == "active"
        if changed:
            suffix = " (forced below minimum)" if force and _below_minimum(plan, fleet, node) \
                else ""
            store.apply(node, lifecycle.DRAIN, actor=actor, reason=reason.strip() + suffix)
    return _publish_and_confirm(fleet, store, node, endpoints, actor=actor, want_served=False,
                                changed=changed, started=started, deadline=deadline,
                                server_timeout=server_timeout)


def _below_minimum(plan: DrainPlan, fleet: Fleet, node: str) -> bool:
    region = fleet.regions[fleet.node(node).region]
    return (plan.region_active_after < region.min_active
            or plan.active_after < fleet.min_active_total)


def undrain_node(fleet: Fleet, store: StateStore, node: str, *, actor: str, reason: str = "",
                 force: bool = False, endpoints: Endpoints | None = None,
                 timeout: float = 60.0, server_timeout: float = SERVER_SECONDS) -> DrainResult:
    """Given a draining or drained node, put it back into DNS and return once every reachable
    server serves it again.

    Refuses (`DrainRefused`) a node whose last recorded health check failed, unless `force`,
    and a node that is neither draining, drained nor active. Undraining an active node changes
    nothing but republishes.
    """
    started = time.monotonic()
    preload_dns()
    deadline = started + positive_seconds(timeout, "the timeout")
    positive_seconds(server_timeout, "the per-server timeout")
    fleet.node(node)
    endpoints = Endpoints.from_store(fleet, store) if endpoints is None else endpoints
    with store.transaction():
        state, refusals = plan_undrain(fleet, store, node, force=force)
        if refusals:
            raise DrainRefused(f"undrain of {node!r} refused: {'; '.join(refusals)}")
        changed = state != "active"
        if changed:
            # A provisioned node enters DNS the way a drained one returns: by undrain.
            move = lifecycle.ACTIVATE if lifecycle.ACTIVATE.allows(state) else lifecycle.UNDRAIN
            store.apply(node, move, actor=actor,
                        reason=reason.strip() or f"undrained (was {state})")
    return _publish_and_confirm(fleet, store, node, endpoints, actor=actor, want_served=True,
                                changed=changed, started=started, deadline=deadline,
                                server_timeout=server_timeout)


def _publish_and_confirm(fleet: Fleet, store: StateStore, node: str, endpoints: Endpoints,
                         *, actor: str, want_served: bool, changed: bool, started: float,
                         deadline: float, server_timeout: float) -> DrainResult:
    publication = prepare(fleet, store, actor=actor)
    record = store.get(node)
    state = record.state if record else UNKNOWN_STATE
    result = DrainResult(node=node, state=state, serial=publication.serial, changed=changed)
    if state == "draining" and record is not None:
        wait = max((entry.ttl for entry in fleet.routed), default=0) + fleet.dns_grace_seconds
        result.clients_gone_at = record.since + wait
    names = [f"{entry.name}.{fleet.domain}." for entry in fleet.routed]
    addresses = _addresses(fleet, node)
    targets = [endpoints[name] for name in sorted(endpoints)]
    lagging = []
    if targets:
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(targets))) as pool:
            futures = {pool.submit(_push_and_confirm, store, endpoint, publication, names,
                                   addresses, want_served, started, deadline,
                                   server_timeout): endpoint.node for endpoint in targets}
            # Recorded as each server finishes (the workers only push and ask).
            for future in as_completed(futures):
                server, outcome = futures[future], future.result()
                record_push(store, server, outcome.serial,
                            outcome.error if outcome.serial is None else "", publication)
                if outcome.error:
                    result.unreachable.append(server)
                    result.errors[server] = outcome.error
                elif outcome.confirmed_after is not None:
                    result.confirmed.append(server)
                    result.confirmed_after[server] = outcome.confirmed_after
                else:
                    lagging.append(server)
    result.confirmed.sort()
    result.unreachable.sort()
    lagging.sort()
    result.seconds = max(result.confirmed_after.values(), default=0.0)
    result.elapsed = time.monotonic() - started
    if lagging:
        verb = "still serves" if not want_served else "does not serve yet"
        raise DrainNotConfirmed(
            f"{'drain' if not want_served else 'undrain'} of {node!r} recorded and published "
            f"(serial {publication.serial}), but after {result.elapsed:.1f} s DNS on "
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
