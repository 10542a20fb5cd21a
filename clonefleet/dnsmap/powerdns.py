"""Talk to one PowerDNS Authoritative: push a zone over its HTTP API, ask it over DNS."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import requests

from clonefleet.dnsmap.endpoints import Endpoint
from clonefleet.dnsmap.errors import DnsError
from clonefleet.dnsmap.zone import RRset


def _check(response: requests.Response, what: str) -> None:
    if response.status_code >= 300:
        body = response.text.strip().replace("\n", " ")[:200]
        raise DnsError(f"{what}: HTTP {response.status_code} {body}")


def push_zone(endpoint: Endpoint, zone: str, rrsets: list[RRset], timeout: float) -> None:
    """Make the server's `zone` hold exactly `rrsets`: create it, or replace and delete rrsets.

    A PATCH with `changetype: REPLACE` also purges the zone from PowerDNS's packet cache, so the
    new answers are served at once. Raises `DnsError` on any failure.
    """
    session = requests.Session()
    session.headers["X-API-Key"] = endpoint.api_key
    url = f"{endpoint.zones_url}/{zone}"
    try:
        current = session.get(url, timeout=timeout)
        if current.status_code in (404, 422):
            created = session.post(endpoint.zones_url, timeout=timeout, json={
                "name": zone,
                "kind": "Native",
                # Serials are clonefleet's, identical on every server; PowerDNS must not bump them.
                "soa_edit_api": "",
                "nameservers": [],
                "rrsets": rrsets,
            })
            _check(created, f"create zone {zone}")
            return
        _check(current, f"read zone {zone}")
        wanted = {(rrset["name"], rrset["type"]) for rrset in rrsets}
        stale = [
            {"name": rrset["name"], "type": rrset["type"], "changetype": "DELETE"}
            for rrset in current.json().get("rrsets", [])
            if (rrset["name"], rrset["type"]) not in wanted
        ]
        changes = [dict(rrset, changetype="REPLACE") for rrset in rrsets] + stale
        _check(session.patch(url, json={"rrsets": changes}, timeout=timeout),
               f"update zone {zone}")
    except requests.RequestException as error:
        raise DnsError(f"PowerDNS API {endpoint.api_url} unreachable: "
                       f"{type(error).__name__}") from None
    finally:
        session.close()


def delete_rrset(endpoint: Endpoint, zone: str, name: str, kind: str, timeout: float) -> None:
    """Remove one rrset behind clonefleet's back (used to test `verify`)."""
    change = {"name": name, "type": kind, "changetype": "DELETE"}
    patch_rrsets(endpoint, zone, [change], timeout)


def patch_rrsets(endpoint: Endpoint, zone: str, changes: list[dict[str, Any]],
                 timeout: float) -> None:
    try:
        response = requests.patch(f"{endpoint.zones_url}/{zone}", json={"rrsets": changes},
                                  headers={"X-API-Key": endpoint.api_key}, timeout=timeout)
    except requests.RequestException as error:
        raise DnsError(f"PowerDNS API {endpoint.api_url} unreachable: "
                       f"{type(error).__name__}") from None
    _check(response, f"update zone {zone}")


@dataclass(frozen=True)
class Answer:
    rcode: str
    addresses: frozenset[str]
    serial: int | None = None


def ecs_option(client: str) -> dns.edns.ECSOption:
    """An EDNS Client Subnet option carrying `client` as a whole host or CIDR."""
    network = ipaddress.ip_network(client, strict=False)
    return dns.edns.ECSOption(str(network.network_address), network.prefixlen)


def ask(endpoint: Endpoint, name: str, kind: str, *, client: str | None = None,
        timeout: float = 2.0) -> Answer:
    """Query the server's DNS port for `name`/`kind`, optionally on behalf of `client` (ECS)."""
    options: list[dns.edns.Option] = [ecs_option(client)] if client else []
    query = dns.message.make_query(name, kind, use_edns=0, options=options)
    try:
        response = dns.query.udp(query, endpoint.dns_host, port=endpoint.dns_port,
                                 timeout=timeout)
        if response.flags & dns.flags.TC:
            response = dns.query.tcp(query, endpoint.dns_host, port=endpoint.dns_port,
                                     timeout=timeout)
    except (dns.exception.DNSException, OSError) as error:
        raise DnsError(f"DNS {endpoint.dns_host}:{endpoint.dns_port} did not answer "
                       f"{name} {kind}: {type(error).__name__}") from None
    wanted = dns.rdatatype.from_text(kind)
    addresses: set[str] = set()
    serial = None
    for rrset in response.answer:
        if rrset.rdtype != wanted:
            continue
        for record in rrset:
            if wanted == dns.rdatatype.SOA:
                serial = int(record.serial)
            else:
                addresses.add(record.to_text())
    return Answer(dns.rcode.to_text(response.rcode()), frozenset(addresses), serial)
