"""Ask every node's DNS server for every routed name and compare the answers with the map."""

from __future__ import annotations

import ipaddress
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from clonefleet.dnsmap.endpoints import Endpoint, Endpoints
from clonefleet.dnsmap.errors import DnsError
from clonefleet.dnsmap.model import DnsMap, MapNode, build_map
from clonefleet.dnsmap.powerdns import ask
from clonefleet.dnsmap.publish import MAX_PARALLEL
from clonefleet.inventory import Fleet
from clonefleet.state import StateStore

# ECS with a /0 source prefix tells the server nothing about the client: its location is
# unknown everywhere, so the answer must be the whole active set.
ANYWHERE = "0.0.0.0/0"


@dataclass(frozen=True)
class Disagreement:
    server: str  # node whose DNS server answered
    name: str
    kind: str  # A, AAAA or SOA
    client: str  # ECS subnet sent, "" for none
    expected: list[str]
    answered: list[str]
    problem: str


@dataclass
class VerifyResult:
    zone: str
    serial: int | None  # the last serial clonefleet published
    checked: list[str] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)
    unconfigured: list[str] = field(default_factory=list)
    disagreements: list[Disagreement] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.disagreements and not self.unreachable


@dataclass(frozen=True)
class Expectation:
    """One question and what the map says any server must answer."""

    name: str
    kind: str
    client: str
    allowed: frozenset[str]
    exactly: bool  # True: the answer is the whole `allowed` set; False: one address from it


def normalized(address: str) -> str:
    return str(ipaddress.ip_address(address))


def _distance(client: MapNode, candidate: MapNode) -> float:
    # The same measure as PowerDNS's pickclosest (lua-record.cc), quirks included, so the
    # expected nearest set is exactly what a correct server picks from.
    latitude_difference = client.latitude - candidate.latitude
    longitude_difference = client.longitude - candidate.longitude
    if longitude_difference > 180:
        longitude_difference = 360 - longitude_difference
    return latitude_difference**2 + longitude_difference**2


def expectations(dns_map: DnsMap) -> list[Expectation]:
    """What to ask each server: per routed name and family, once from an unknown place (all
    active nodes) and once from each region (its nearest active nodes; one of them)."""
    questions = []
    for entry in dns_map.routed:
        for kind, family in (("A", "ipv4"), ("AAAA", "ipv6")):
            active = [node for node in entry.nodes if getattr(node, family)]
            everything = frozenset(normalized(getattr(node, family)) for node in active)
            anywhere = ANYWHERE if kind == "A" else "::/0"
            questions.append(Expectation(entry.name, kind, anywhere, everything, True))
            seen_regions: set[str] = set()
            for probe in dns_map.nodes:
                # Any node's own address is located at its region in clonefleet's GeoIP
                # database, so it stands in for "a client in that region".
                if probe.region in seen_regions or not getattr(probe, family):
                    continue
                seen_regions.add(probe.region)
                client = getattr(probe, family) + ("/32" if kind == "A" else "/128")
                if not active:
                    questions.append(Expectation(entry.name, kind, client, frozenset(), True))
                    continue
                nearest = min(_distance(probe, node) for node in active)
                allowed = frozenset(normalized(getattr(node, family)) for node in active
                                    if _distance(probe, node) == nearest)
                questions.append(Expectation(entry.name, kind, client, allowed, False))
    return questions


def check_server(endpoint: Endpoint, dns_map: DnsMap, serial: int | None,
                 questions: list[Expectation], timeout: float) -> list[Disagreement]:
    """Ask one server everything; return where it disagrees. Raises `DnsError` if it is silent."""
    found = []
    soa = ask(endpoint, dns_map.domain, "SOA", timeout=timeout)
    if serial is not None and soa.serial != serial:
        found.append(Disagreement(endpoint.node, dns_map.domain, "SOA", "", [str(serial)],
                                  [str(soa.serial)] if soa.serial is not None else [],
                                  f"stale serial (rcode {soa.rcode})"))
    for question in questions:
        answer = ask(endpoint, question.name, question.kind, client=question.client,
                     timeout=timeout)
        answered = frozenset(normalized(address) for address in answer.addresses)
        if question.exactly:
            wrong = answered != question.allowed
            problem = "answer differs from the active set"
        else:
            wrong = len(answered) != 1 or not answered <= question.allowed
            problem = "not one of the nearest active nodes"
        if wrong:
            extra = answered - question.allowed
            if extra:
                problem += f"; serves addresses not in the map: {', '.join(sorted(extra))}"
            found.append(Disagreement(endpoint.node, question.name, question.kind,
                                      question.client, sorted(question.allowed),
                                      sorted(answered), problem))
    return found


def verify(fleet: Fleet, store: StateStore, endpoints: Endpoints | None = None, *,
           timeout: float = 2.0) -> VerifyResult:
    """Given the fleet, states and endpoints, query every server and report disagreements."""
    endpoints = Endpoints.from_store(fleet, store) if endpoints is None else endpoints
    dns_map = build_map(fleet, store)
    serial = store.last_dns_serial()
    questions = expectations(dns_map)
    result = VerifyResult(zone=dns_map.domain, serial=serial,
                          unconfigured=sorted(set(fleet.nodes) - set(endpoints)))
    targets = [endpoints[name] for name in sorted(endpoints)]

    def run(endpoint: Endpoint) -> list[Disagreement] | str:
        try:
            return check_server(endpoint, dns_map, serial, questions, timeout)
        except DnsError as error:
            return str(error)

    if targets:
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(targets))) as pool:
            outcomes = list(pool.map(run, targets))
        for endpoint, outcome in zip(targets, outcomes, strict=True):
            if isinstance(outcome, str):
                result.unreachable[endpoint.node] = outcome
            else:
                result.checked.append(endpoint.node)
                result.disagreements.extend(outcome)
    return result
