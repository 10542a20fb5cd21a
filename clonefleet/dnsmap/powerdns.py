"""Talk to one PowerDNS Authoritative: push a zone over its HTTP API, ask it over DNS.

The HTTP API is spoken with the standard library's `http.client`, not `requests`: three small
JSON calls do not need a session layer, and `requests` alone took ~0.2 s to import here, which
every `clonefleet drain` paid before doing anything (see docs/dns.md, start-up).
Every call takes an absolute `deadline` (time.monotonic()), so one server's calls together
never take longer than that server's budget.
"""

from __future__ import annotations

import http.client
import importlib
import ipaddress
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from clonefleet.dnsmap.endpoints import Endpoint
from clonefleet.dnsmap.errors import DnsError
from clonefleet.dnsmap.zone import RRset, foreign

if TYPE_CHECKING:
    import dns.edns


def _remaining(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise DnsError(f"{what}: out of time")
    return left


def api_call(endpoint: Endpoint, method: str, path: str, deadline: float,
             body: Any = None) -> tuple[int, Any]:
    """One HTTP call to the server's API (`path` below /api/v1/servers/ID); (status, JSON).

    Raises `DnsError` naming the server when it cannot be reached or does not answer in time.
    """
    url = urlsplit(endpoint.api_url)
    connection_type = (http.client.HTTPSConnection if url.scheme == "https"
                       else http.client.HTTPConnection)
    base = url.path.rstrip("/")
    target = f"{base}/api/v1/servers/{quote(endpoint.server_id)}{path}"
    data = json.dumps(body).encode() if body is not None else None
    headers = {"X-API-Key": endpoint.api_key, "Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    try:
        connection = connection_type(url.hostname or "", url.port,
                                     timeout=_remaining(deadline, endpoint.api_url))
        try:
            connection.request(method, target, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
    except (OSError, http.client.HTTPException) as error:
        kind = "no answer in time" if isinstance(error, TimeoutError) else type(error).__name__
        raise DnsError(f"PowerDNS API {endpoint.api_url} unreachable: {kind}") from None
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode(errors="replace")
    return response.status, parsed


def _check(status: int, body: Any, what: str) -> None:
    if status >= 300:
        text = (body.get("error") if isinstance(body, dict) else None) or str(body)
        raise DnsError(f"{what}: HTTP {status} {text.strip()[:200]}")


def get_zone(endpoint: Endpoint, zone: str, deadline: float) -> list[RRset] | None:
    """The zone's rrsets as the API lists them, or None when the server has no such zone."""
    status, body = api_call(endpoint, "GET", f"/zones/{zone}", deadline)
    if status in (404, 422):
        return None
    _check(status, body, f"read zone {zone} on {endpoint.node}")
    rrsets: list[RRset] = body.get("rrsets", []) if isinstance(body, dict) else []
    return rrsets


def zone_serial(rrsets: list[RRset]) -> int | None:
    for rrset in rrsets:
        if rrset["type"] == "SOA" and rrset.get("records"):
            fields = str(rrset["records"][0]["content"]).split()
            if len(fields) >= 3 and fields[2].isdigit():
                return int(fields[2])
    return None


def _comparable(rrset: RRset) -> tuple[int, list[tuple[str, bool]]]:
    return rrset["ttl"], sorted((str(record["content"]), bool(record.get("disabled")))
                                for record in rrset.get("records", []))


def push_zone(endpoint: Endpoint, zone: str, rrsets: list[RRset], serial: int,
              deadline: float, allocated: Callable[[int], bool] = lambda held: False) -> int:
    """Make the server's `zone` hold exactly `rrsets`: replace and delete rrsets, or create the
    zone and flush the server's caches for it. Returns the serial the server now holds.

    A server that already holds a higher serial that clonefleet allocated (`allocated(held)`)
    keeps it: a later publish got there first, and its map includes every change this one
    carries (serials are allocated in order, after the states are read). A higher serial
    clonefleet never allocated (a hand edit) is overwritten like any other difference, so it
    cannot lock the server out of every future publish. Raises `DnsError` on any failure.
    """
    current = get_zone(endpoint, zone, deadline)
    if current is not None:
        held = zone_serial(current)
        if held is not None and held > serial and allocated(held):
            return held
        held_now = {(rrset["name"], rrset["type"]): _comparable(rrset) for rrset in current}
        wanted = {(rrset["name"], rrset["type"]) for rrset in rrsets}
        # Challenge records (`foreign`) are left alone: only rrsets named in the PATCH change,
        # so records added while this push ran survive it too.
        stale = [{"name": rrset["name"], "type": rrset["type"], "changetype": "DELETE"}
                 for rrset in current
                 if (rrset["name"], rrset["type"]) not in wanted and not foreign(rrset)]
        # Only what differs from what the server holds is sent: the result is the same whole
        # zone, and the server rewrites 2-3 rrsets on a drain instead of all of them (with 30
        # servers on a busy 2-core machine that halved the PATCH time).
        changes = [dict(rrset, changetype="REPLACE") for rrset in rrsets
                   if held_now.get((rrset["name"], rrset["type"])) != _comparable(rrset)]
        changes += stale
        # The PATCH purges the zone from the packet and query caches itself (checked here:
        # drained answers change at once), so no separate flush is needed: one call less
        # per server on every drain.
        status, body = api_call(endpoint, "PATCH", f"/zones/{zone}", deadline,
                                {"rrsets": changes})
        _check(status, body, f"update zone {zone} on {endpoint.node}")
        return serial
    status, body = api_call(endpoint, "POST", "/zones", deadline, {
        "name": zone,
        "kind": "Native",
        # Serials are clonefleet's, identical on every server; PowerDNS must not bump them.
        "soa_edit_api": "",
        "nameservers": [],
        "rrsets": rrsets,
    })
    _check(status, body, f"create zone {zone} on {endpoint.node}")
    # A server asked before the zone existed keeps answering from its cache (REFUSED) for
    # ~20 s after the zone is created (zone creation purges nothing); flushing the zone's
    # entries makes it answer at once.
    status, body = api_call(endpoint, "PUT", f"/cache/flush?domain={quote(zone)}", deadline)
    _check(status, body, f"flush the cache for {zone} on {endpoint.node}")
    return serial


def patch_rrsets(endpoint: Endpoint, zone: str, changes: list[dict[str, Any]],
                 timeout: float) -> None:
    """Change only the rrsets named in `changes` (REPLACE or DELETE each), leaving the rest of
    the zone as it is: the certificate's challenge records, and tests tampering with a
    server. Raises `DnsError` naming the server."""
    status, body = api_call(endpoint, "PATCH", f"/zones/{zone}", time.monotonic() + timeout,
                            {"rrsets": changes})
    _check(status, body, f"update zone {zone} on {endpoint.node}")


def delete_rrset(endpoint: Endpoint, zone: str, name: str, kind: str, timeout: float) -> None:
    """Remove one rrset behind clonefleet's back (used to test `verify`)."""
    change = {"name": name, "type": kind, "changetype": "DELETE"}
    patch_rrsets(endpoint, zone, [change], timeout)


DNS_MODULES = ("dns.edns", "dns.exception", "dns.flags", "dns.message", "dns.query", "dns.rcode",
               "dns.rdatatype")


def preload_dns() -> None:
    """Start importing dnspython in the background (a daemon thread).

    A drain needs it only after its pushes, and importing it takes ~0.1 s of CPU; begun at the
    start of the drain, the import overlaps the state change and the HTTP calls, which mostly
    wait on the servers. `ask` imports the same modules; Python's per-module import locks make
    it wait for a half-done import instead of running it twice.
    """
    def load() -> None:
        for name in DNS_MODULES:
            importlib.import_module(name)

    threading.Thread(target=load, name="preload-dnspython", daemon=True).start()


@dataclass(frozen=True)
class Answer:
    rcode: str
    addresses: frozenset[str]  # A/AAAA answers, as dnspython prints them
    serial: int | None = None  # SOA answers
    ttl: int | None = None  # of the answer rrset of the asked type
    records: frozenset[str] = frozenset()  # every record of the asked type, as text


def ecs_option(client: str) -> dns.edns.ECSOption:
    """An EDNS Client Subnet option carrying `client` as a whole host or CIDR."""
    import dns.edns

    network = ipaddress.ip_network(client, strict=False)
    return dns.edns.ECSOption(str(network.network_address), network.prefixlen)


def ask(endpoint: Endpoint, name: str, kind: str, *, client: str | None = None,
        timeout: float = 2.0) -> Answer:
    """Query the server's DNS port for `name`/`kind`, optionally on behalf of `client` (ECS)."""
    # dnspython is imported here, not at the top: it costs ~0.1 s, and only commands that
    # really query DNS should pay it.
    import dns.edns
    import dns.exception
    import dns.flags
    import dns.message
    import dns.query
    import dns.rcode
    import dns.rdatatype

    if timeout <= 0:
        raise DnsError(f"DNS {endpoint.dns_host}:{endpoint.dns_port}: out of time")
    options: list[dns.edns.Option] = [ecs_option(client)] if client else []
    query = dns.message.make_query(name, kind, use_edns=0, options=options)
    address = endpoint.dns_address
    try:
        response = dns.query.udp(query, address, port=endpoint.dns_port, timeout=timeout)
        if response.flags & dns.flags.TC:
            response = dns.query.tcp(query, address, port=endpoint.dns_port, timeout=timeout)
    except (dns.exception.DNSException, OSError) as error:
        kind_of = "no answer in time" if isinstance(error, dns.exception.Timeout) \
            else type(error).__name__
        raise DnsError(f"DNS {endpoint.dns_host}:{endpoint.dns_port} did not answer "
                       f"{name} {kind}: {kind_of}") from None
    wanted = dns.rdatatype.from_text(kind)
    addresses: set[str] = set()
    records: set[str] = set()
    serial = None
    ttl = None
    for rrset in response.answer:
        if rrset.rdtype != wanted:
            continue
        ttl = rrset.ttl
        for record in rrset:
            records.add(record.to_text())
            if wanted == dns.rdatatype.SOA:
                serial = int(record.serial)
            elif wanted in (dns.rdatatype.A, dns.rdatatype.AAAA):
                addresses.add(record.to_text())
    return Answer(dns.rcode.to_text(response.rcode()), frozenset(addresses), serial, ttl,
                  frozenset(records))
