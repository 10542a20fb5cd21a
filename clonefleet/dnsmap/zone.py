"""Render the DNS map as PowerDNS rrsets (the JSON shape of its HTTP API).

Each routed name becomes one LUA rrset holding an `A` and an `AAAA` program. The program lists
the active nodes explicitly (node states are the source of truth; PowerDNS's own health-checked
functions would make every node's answers drift apart) with their coordinates, and picks the
node nearest by great-circle distance to the client's EDNS Client Subnet or address (see
`nearest.py`). When the client's location is unknown, the program answers with every active node.
"""

from __future__ import annotations

from typing import Any

from clonefleet.dnsmap.errors import DnsError
from clonefleet.dnsmap.model import DnsMap, RoutedEntry
from clonefleet.dnsmap.nearest import Site, lua_program, sites

SOA_TIMERS = "3600 600 604800"
NAMESERVER_TTL = 3600

RRset = dict[str, Any]

# rrsets in the zone that the map does not own: ACME DNS-01 challenge records, published and
# removed by `clonefleet.certs` while a certificate is being obtained. A publish must neither
# replace nor delete them (a drain during issuance would fail the validation), and `verify`
# does not count them as stray. No routed or node name can start with "_" (the fleet file's
# names are DNS labels of letters, digits and "-"), so the map never renders one.
CHALLENGE_PREFIX = "_acme-challenge."


def foreign(rrset: RRset) -> bool:
    """Whether the rrset belongs to another part of clonefleet, not to the map."""
    return rrset["type"] == "TXT" and str(rrset["name"]).startswith(CHALLENGE_PREFIX)


def routed_sites(entry: RoutedEntry, family: str) -> tuple[Site, ...]:
    """The active nodes behind `entry` with an address of `family` (ipv4/ipv6), by place."""
    return sites([(getattr(node, family), node.latitude, node.longitude)
                  for node in entry.nodes if getattr(node, family)])


def soa_content(dns_map: DnsMap, serial: int) -> str:
    primary = f"{dns_map.nodes[0].name}.{dns_map.domain}" if dns_map.nodes else dns_map.domain
    negative_ttl = min((entry.ttl for entry in dns_map.routed), default=60)
    return f"{primary} hostmaster.{dns_map.domain} {serial} {SOA_TIMERS} {negative_ttl}"


def _rrset(name: str, kind: str, ttl: int, contents: list[str]) -> RRset:
    return {
        "name": name,
        "type": kind,
        "ttl": ttl,
        "records": [{"content": content, "disabled": False} for content in contents],
    }


def render_rrsets(dns_map: DnsMap, serial: int) -> list[RRset]:
    """Given the map and a serial, return every rrset clonefleet owns in the zone, sorted.

    Besides the routed names: SOA, NS naming every node (`<node>.<domain>`) and those host
    names' addresses. NS sets cannot be drained quickly anyway (parent TTLs), so they list all
    nodes; a drained node's server keeps answering with the map that excludes it.
    """
    domain = dns_map.domain
    routed_names = {entry.name for entry in dns_map.routed}
    rrsets = [_rrset(domain, "SOA", NAMESERVER_TTL, [soa_content(dns_map, serial)])]
    hosts = [node for node in dns_map.nodes if node.addresses]
    if hosts:
        rrsets.append(_rrset(domain, "NS", NAMESERVER_TTL,
                             [f"{node.name}.{domain}" for node in hosts]))
    for node in hosts:
        host = f"{node.name}.{domain}"
        if host in routed_names:
            raise DnsError(f"routed name {host} is also node {node.name!r}'s host name; "
                           "rename the routed name in the fleet file")
        if node.ipv4:
            rrsets.append(_rrset(host, "A", NAMESERVER_TTL, [node.ipv4]))
        if node.ipv6:
            rrsets.append(_rrset(host, "AAAA", NAMESERVER_TTL, [node.ipv6]))
    for entry in dns_map.routed:
        programs = []
        for kind, family in (("A", "ipv4"), ("AAAA", "ipv6")):
            places = routed_sites(entry, family)
            if places:
                programs.append(f'{kind} "{lua_program(places, entry.answers)}"')
        # No active node: no rrset at all, so clients get an empty answer rather than a
        # drained address.
        if programs:
            rrsets.append(_rrset(entry.name, "LUA", entry.ttl, programs))
    return sorted(rrsets, key=lambda rrset: (rrset["name"], rrset["type"]))
