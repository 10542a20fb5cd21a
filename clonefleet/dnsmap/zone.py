"""Render the DNS map as PowerDNS rrsets (the JSON shape of its HTTP API).

Each routed name becomes one LUA rrset holding an `A` and an `AAAA` program. The program lists
the active nodes explicitly (node states are the source of truth; PowerDNS's own health-checked
functions would make every node's answers drift apart) and lets `pickclosest` choose the node
nearest to the client's EDNS Client Subnet or address. When the client's location is unknown,
`latlon()` reports `0.000000 0.000000` and the program answers with every active node instead of
`pickclosest`'s arbitrary first pick.
"""

from __future__ import annotations

from typing import Any

from clonefleet.dnsmap.errors import DnsError
from clonefleet.dnsmap.model import DnsMap

# PowerDNS prints an unknown location as exactly this string (4.7, checked on this machine).
UNKNOWN_LOCATION = "0.000000 0.000000"
SOA_TIMERS = "3600 600 604800"
NAMESERVER_TTL = 3600

RRset = dict[str, Any]


def lua_program(addresses: tuple[str, ...]) -> str:
    """The Lua that picks the nearest of `addresses`, or all of them for an unknown client."""
    listed = ",".join(f"'{address}'" for address in addresses)
    return (f";local nodes = {{{listed}}} "
            f"if latlon() == '{UNKNOWN_LOCATION}' then return nodes end "
            "return pickclosest(nodes)")


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
        if entry.ipv4:
            programs.append(f'A "{lua_program(entry.ipv4)}"')
        if entry.ipv6:
            programs.append(f'AAAA "{lua_program(entry.ipv6)}"')
        # No active node: no rrset at all, so clients get an empty answer rather than a
        # drained address.
        if programs:
            rrsets.append(_rrset(entry.name, "LUA", entry.ttl, programs))
    return sorted(rrsets, key=lambda rrset: (rrset["name"], rrset["type"]))
