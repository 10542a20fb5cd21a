"""Check every node's DNS server against the map: its zone through the API, its answers over DNS.

Two views, because each catches what the other cannot:

- the API lists every rrset the server holds, so a stray rrset, a changed host record or a
  raised TTL shows even for names clonefleet would never ask about;
- real DNS queries (with ECS, from an unknown place and from each region) show what clients
  are given, which is what matters if the API and the DNS side ever disagree.

Each difference is one `Disagreement`. A server without the zone (never published to) is one.
Every run's outcome is kept in the state store (`VERIFY_FACT`), so `clonefleet serve` can
report the last result as metrics whichever process ran the check.
"""

from __future__ import annotations

import ipaddress
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from clonefleet.dnsmap.endpoints import Endpoint, Endpoints
from clonefleet.dnsmap.errors import DnsError
from clonefleet.dnsmap.model import DnsMap, build_map
from clonefleet.dnsmap.nearest import nearest
from clonefleet.dnsmap.powerdns import ask, get_zone, zone_serial
from clonefleet.dnsmap.publish import MAX_PARALLEL, SERVER_SECONDS, positive_seconds
from clonefleet.dnsmap.zone import RRset, foreign, render_rrsets, routed_sites
from clonefleet.inventory import Fleet
from clonefleet.state import FLEET_FACTS, StateStore

# ECS with a /0 source prefix tells the server nothing about the client: its location is
# unknown everywhere, so the answer must be the whole active set.
ANYWHERE = "0.0.0.0/0"

VERIFY_FACT = "dns_verify_last"


@dataclass(frozen=True)
class Disagreement:
    server: str  # node whose DNS server answered
    name: str
    kind: str  # rrset type (A, AAAA, LUA, SOA, NS, ...)
    client: str  # ECS subnet sent, "" for none
    expected: list[str]
    answered: list[str]
    problem: str
    via: str = "dns"  # "dns": a real query's answer; "api": the zone as the API lists it


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
    exactly: bool  # True: the answer is the whole `allowed` set; False: `count` from it
    ttl: int | None = None  # the TTL every answer must carry
    count: int = 1  # not exactly: how many addresses (fewer if there are fewer)
    required: frozenset[str] = frozenset()  # not exactly: addresses that must be among them
    active: frozenset[str] = frozenset()  # every active address of the family (for messages)


def normalized(address: str) -> str:
    return str(ipaddress.ip_address(address))


def expectations(dns_map: DnsMap) -> list[Expectation]:
    """What to ask each server: per routed name and family, once from an unknown place (all
    active nodes) and once from each region (its nearest active nodes by great-circle
    distance, as the LUA program computes it; one of them)."""
    questions = []
    for entry in dns_map.routed:
        for kind, family in (("A", "ipv4"), ("AAAA", "ipv6")):
            places = routed_sites(entry, family)
            everything = frozenset(normalized(address) for place in places
                                   for address in place.addresses)
            anywhere = ANYWHERE if kind == "A" else "::/0"
            questions.append(Expectation(entry.name, kind, anywhere, everything, True,
                                         entry.ttl if places else None))
            seen_regions: set[str] = set()
            for probe in dns_map.nodes:
                # Any node's own address is located at its region in clonefleet's GeoIP
                # database, so it stands in for "a client in that region".
                if probe.region in seen_regions or not getattr(probe, family):
                    continue
                seen_regions.add(probe.region)
                client = getattr(probe, family) + ("/32" if kind == "A" else "/128")
                if not places:
                    questions.append(Expectation(entry.name, kind, client, frozenset(), True))
                    continue
                required, allowed = nearest(probe.latitude, probe.longitude, places,
                                            entry.answers)
                questions.append(Expectation(
                    entry.name, kind, client, frozenset(map(normalized, allowed)), False,
                    entry.ttl, min(entry.answers, len(everything)),
                    frozenset(map(normalized, required)), everything))
    return questions


def _contents(rrset: RRset) -> list[str]:
    contents = []
    for record in rrset.get("records", []):
        content = str(record["content"])
        if rrset["type"] in ("A", "AAAA"):
            content = normalized(content)
        contents.append(content + (" (disabled)" if record.get("disabled") else ""))
    return sorted(contents)


def compare_zone(server: str, held: list[RRset], wanted: list[RRset],
                 serial: int | None) -> list[Disagreement]:
    """Every difference between the rrsets a server holds and the rendered map: missing,
    stray, TTL, contents, and the SOA serial on its own."""
    found = []
    # Challenge records come and go with certificate issuance; they are not the map's.
    have = {(rrset["name"], rrset["type"]): rrset for rrset in held if not foreign(rrset)}
    want = {(rrset["name"], rrset["type"]): rrset for rrset in wanted}

    def differ(key: tuple[str, str], expected: list[str], answered: list[str],
               problem: str) -> None:
        found.append(Disagreement(server, key[0], key[1], "", expected, answered, problem,
                                  via="api"))

    for key in sorted(want.keys() | have.keys()):
        if key not in have:
            differ(key, _contents(want[key]), [], "rrset missing on the server")
            continue
        if key not in want:
            differ(key, [], _contents(have[key]), "stray rrset the map does not have")
            continue
        mine, theirs = want[key], have[key]
        if mine["ttl"] != theirs["ttl"]:
            differ(key, [str(mine["ttl"])], [str(theirs["ttl"])], "TTL differs from the map")
        expected, answered = _contents(mine), _contents(theirs)
        if key[1] == "SOA":
            held_serial = zone_serial([theirs])
            if held_serial != serial:
                differ(key, [str(serial)] if serial is not None else [],
                       [str(held_serial)] if held_serial is not None else [],
                       "stale serial" if serial is not None
                       else "serial not from any publish recorded in the state store")
            # The rest of the SOA must match too; the serial is reported above.
            expected = [_without_serial(content) for content in expected]
            answered = [_without_serial(content) for content in answered]
        if expected != answered:
            differ(key, expected, answered, "contents differ from the map")
    return found


def _without_serial(soa: str) -> str:
    fields = soa.split()
    return " ".join([*fields[:2], "*", *fields[3:]]) if len(fields) >= 3 else soa


def _record_text(kind: str, text: str) -> str:
    return normalized(text) if kind in ("A", "AAAA") else text


def check_dns_records(endpoint: Endpoint, wanted: list[RRset], serial: int | None,
                      deadline: float, timeout: float) -> list[Disagreement]:
    """Ask the server over DNS for every plain rrset of the map (SOA, NS, host addresses):
    the records and the TTL a client gets must be the map's."""
    found = []
    for rrset in wanted:
        if rrset["type"] == "LUA":
            continue
        answer = ask(endpoint, rrset["name"], rrset["type"],
                     timeout=min(timeout, deadline - time.monotonic()))
        expected = sorted(_record_text(rrset["type"], record["content"])
                          for record in rrset["records"])
        answered = sorted(_record_text(rrset["type"], text) for text in answer.records)
        if rrset["type"] == "SOA":
            if serial is not None and answer.serial != serial:
                found.append(Disagreement(endpoint.node, rrset["name"], "SOA", "",
                                          [str(serial)],
                                          [str(answer.serial)] if answer.serial else [],
                                          f"stale serial (rcode {answer.rcode})"))
            expected = [_without_serial(text) for text in expected]
            answered = [_without_serial(text) for text in answered]
        if expected != answered:
            found.append(Disagreement(endpoint.node, rrset["name"], rrset["type"], "",
                                      expected, answered,
                                      f"answer differs from the map (rcode {answer.rcode})"))
        elif answer.ttl != rrset["ttl"]:
            found.append(Disagreement(endpoint.node, rrset["name"], rrset["type"], "",
                                      [f"TTL {rrset['ttl']}"], [f"TTL {answer.ttl}"],
                                      "answer's TTL differs from the map"))
    return found


def check_routed(endpoint: Endpoint, questions: list[Expectation], deadline: float,
                 timeout: float) -> list[Disagreement]:
    """Ask the server every routed question (with ECS); return where its answers disagree."""
    found = []
    for question in questions:
        answer = ask(endpoint, question.name, question.kind, client=question.client,
                     timeout=min(timeout, deadline - time.monotonic()))
        answered = frozenset(normalized(address) for address in answer.addresses)
        if question.exactly:
            wrong = answered != question.allowed
            problem = "answer differs from the active set"
        else:
            wrong = (len(answered) != question.count or not answered <= question.allowed
                     or not question.required <= answered)
            problem = (f"not the {question.count} nearest active node(s) (great-circle distance)"
                       if question.count > 1 else
                       "not one of the nearest active nodes (great-circle distance)")
        if wrong:
            active = question.active or question.allowed
            extra = answered - active
            if extra:
                problem += f"; serves addresses not in the map: {', '.join(sorted(extra))}"
            farther = (answered & active) - question.allowed
            if farther:
                problem += f"; serves farther active nodes: {', '.join(sorted(farther))}"
            found.append(Disagreement(endpoint.node, question.name, question.kind,
                                      question.client, sorted(question.allowed),
                                      sorted(answered), problem))
        elif question.ttl is not None and answer.ttl != question.ttl:
            found.append(Disagreement(endpoint.node, question.name, question.kind,
                                      question.client, [f"TTL {question.ttl}"],
                                      [f"TTL {answer.ttl}"],
                                      "answer's TTL differs from the map (resolvers would "
                                      "keep a drained node that long)"))
    return found


def check_server(endpoint: Endpoint, dns_map: DnsMap, serial: int | None,
                 wanted: list[RRset], questions: list[Expectation],
                 timeout: float) -> list[Disagreement]:
    """Compare one server's zone (API) and answers (DNS) with the map. Raises `DnsError` if it
    does not answer; each call gets at most `timeout` seconds, and the server as a whole
    `timeout` per call it needs, so a hung server fails on its first call."""
    calls = 2 + len(wanted) + len(questions)
    deadline = time.monotonic() + timeout * calls
    held = get_zone(endpoint, dns_map.domain, min(deadline, time.monotonic() + timeout))
    if held is None:
        return [Disagreement(endpoint.node, dns_map.domain, "zone", "", ["the fleet's zone"],
                             [], "zone missing: the server was never published to (run "
                             "`clonefleet dns publish`)", via="api")]
    found = compare_zone(endpoint.node, held, wanted, serial)
    found += check_dns_records(endpoint, wanted, serial, deadline, timeout)
    found += check_routed(endpoint, questions, deadline, timeout)
    return found


def verify(fleet: Fleet, store: StateStore, endpoints: Endpoints | None = None, *,
           timeout: float = SERVER_SECONDS) -> VerifyResult:
    """Given the fleet, states and endpoints, check every server in parallel and report each
    difference from the map. `timeout` bounds each API call and DNS query."""
    positive_seconds(timeout, "the timeout")
    endpoints = Endpoints.from_store(fleet, store) if endpoints is None else endpoints
    dns_map = build_map(fleet, store)
    serial = store.last_dns_serial()
    wanted = render_rrsets(dns_map, serial if serial is not None else 0)
    questions = expectations(dns_map)
    result = VerifyResult(zone=dns_map.domain, serial=serial,
                          unconfigured=sorted(set(fleet.nodes) - set(endpoints)))
    targets = [endpoints[name] for name in sorted(endpoints)]

    def run(endpoint: Endpoint) -> list[Disagreement] | str:
        try:
            return check_server(endpoint, dns_map, serial, wanted, questions, timeout)
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
    record_verify(store, result)
    return result


def record_verify(store: StateStore, result: VerifyResult) -> None:
    """Keep `result` as the fleet's last verify outcome (`VERIFY_FACT` of `FLEET_FACTS`):
    counts and node names only, so it stays small however many answers disagree."""
    store.set_fact(FLEET_FACTS, VERIFY_FACT, {
        "at": time.time(),
        # A run that reached no server proved nothing, so it is not a pass.
        "ok": result.ok and bool(result.checked),
        "serial": result.serial,
        "checked": sorted(result.checked),
        "disagreeing": sorted({item.server for item in result.disagreements}),
        "unreachable": sorted(result.unreachable),
        "unconfigured": sorted(result.unconfigured),
        "disagreements": len(result.disagreements),
    })


def as_lines(result: VerifyResult) -> list[str]:
    """One line per difference, naming server, view, name, type, client, expected and got."""
    lines = []
    for item in result.disagreements:
        client = f" client {item.client}" if item.client else ""
        lines.append(f"{item.server} ({item.via}): {item.name} {item.kind}{client}: "
                     f"{item.problem}; expected {', '.join(item.expected) or 'nothing'}, "
                     f"got {', '.join(item.answered) or 'nothing'}")
    return lines

