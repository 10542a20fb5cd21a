"""`verify` against real PowerDNS servers tampered with behind clonefleet's back: every kind of
difference is found and named (server, name, type, what differs), through the API and over DNS.
"""

from __future__ import annotations

import pytest
from pdns_fixture import CLIENT_UNKNOWN, DnsLab

from clonefleet.dnsmap import Disagreement, Endpoints, publish, verify
from clonefleet.dnsmap.powerdns import ask, patch_rrsets

pytestmark = pytest.mark.integration

ZONE = "dnslab.clonefleet.test."
EDGE = "edge.dnslab.clonefleet.test."


def found(lab: DnsLab) -> list[Disagreement]:
    result = verify(lab.fleet, lab.store, lab.endpoints, timeout=2)
    assert result.unreachable == {}
    assert sorted(result.checked) == sorted(lab.fleet.nodes)
    return result.disagreements


def test_a_freshly_published_fleet_verifies_clean(dns_lab: DnsLab) -> None:
    publish(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, actor="test")
    assert found(dns_lab) == []


def test_a_stray_rrset_on_one_server_is_named(dns_lab: DnsLab) -> None:
    publish(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, actor="test")
    stray = "stray.dnslab.clonefleet.test."
    patch_rrsets(dns_lab.servers["fsn-2"].endpoint, ZONE, [{
        "name": stray, "type": "A", "ttl": 30, "changetype": "REPLACE",
        "records": [{"content": "192.0.2.99", "disabled": False}]}], timeout=5)
    # The server really answers it: this is what clients could be given.
    assert ask(dns_lab.servers["fsn-2"].endpoint, stray, "A").addresses == {"192.0.2.99"}
    assert [(item.server, item.via, item.name, item.kind, item.answered, item.problem)
            for item in found(dns_lab)] == [
        ("fsn-2", "api", stray, "A", ["192.0.2.99"], "stray rrset the map does not have")]


def test_a_changed_host_address_is_named_through_the_api_and_over_dns(
        dns_lab: DnsLab) -> None:
    publish(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, actor="test")
    host = "ash-1.dnslab.clonefleet.test."
    patch_rrsets(dns_lab.servers["sin-1"].endpoint, ZONE, [{
        "name": host, "type": "A", "ttl": 3600, "changetype": "REPLACE",
        "records": [{"content": "203.0.113.66", "disabled": False}]}], timeout=5)
    differences = found(dns_lab)
    assert sorted((item.server, item.via, item.name, item.kind, item.expected, item.answered)
                  for item in differences) == [
        ("sin-1", "api", host, "A", ["198.51.100.21"], ["203.0.113.66"]),
        ("sin-1", "dns", host, "A", ["198.51.100.21"], ["203.0.113.66"])]


def test_a_raised_ttl_on_a_routed_name_is_named(dns_lab: DnsLab) -> None:
    published = publish(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, actor="test")
    (edge,) = [rrset for rrset in published.rrsets
               if rrset["name"] == EDGE and rrset["type"] == "LUA"]
    patch_rrsets(dns_lab.servers["ash-2"].endpoint, ZONE,
                 [dict(edge, ttl=3600, changetype="REPLACE")], timeout=5)
    answer = ask(dns_lab.servers["ash-2"].endpoint, EDGE, "A", client=CLIENT_UNKNOWN + "/24")
    assert answer.ttl == 3600  # what resolvers would now keep a drained node for
    differences = found(dns_lab)
    assert {item.server for item in differences} == {"ash-2"}
    api = [item for item in differences if item.via == "api"]
    assert [(item.name, item.kind, item.expected, item.answered, item.problem)
            for item in api] == [(EDGE, "LUA", ["30"], ["3600"], "TTL differs from the map")]
    over_dns = [item for item in differences if item.via == "dns"]
    # Every question about the name (A and AAAA, from anywhere and from each region) sees it.
    assert over_dns and all(item.name == EDGE and item.answered == ["TTL 3600"]
                            and "TTL differs" in item.problem for item in over_dns)
    assert {item.kind for item in over_dns} == {"A", "AAAA"}


def test_servers_never_published_to_fail_verify_each_by_name(dns_lab: DnsLab) -> None:
    result = verify(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, timeout=2)
    assert not result.ok
    assert sorted((item.server, item.kind, item.via) for item in result.disagreements) == [
        (node, "zone", "api") for node in sorted(dns_lab.fleet.nodes)]
    assert all("never published" in item.problem for item in result.disagreements)


def test_a_server_added_after_the_last_publish_fails_until_the_next_one(
        dns_lab: DnsLab) -> None:
    servers = dict(dns_lab.servers)
    late = servers.pop("sin-1")
    endpoints = {name: server.endpoint for name, server in servers.items()}
    publish(dns_lab.fleet, dns_lab.store, Endpoints(endpoints), actor="test")
    result = verify(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, timeout=2)
    assert [(item.server, item.kind) for item in result.disagreements] == [("sin-1", "zone")]
    # The zone is created on it by the next publish and answered at once: the cache flush
    # after the push drops the REFUSED it had cached when asked before the zone existed.
    assert ask(late.endpoint, EDGE, "A").rcode == "REFUSED"
    publish(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, actor="test")
    assert ask(late.endpoint, EDGE, "A").rcode == "NOERROR"
    assert verify(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, timeout=2).ok


def test_a_serial_raised_by_hand_above_any_publish_is_overwritten_by_the_next_one(
        dns_lab: DnsLab) -> None:
    published = publish(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, actor="test")
    assert published.serial is not None
    (soa,) = [rrset for rrset in published.rrsets if rrset["type"] == "SOA"]
    bogus = published.serial + 10_000_000
    content = soa["records"][0]["content"].replace(f" {published.serial} ", f" {bogus} ")
    patch_rrsets(dns_lab.servers["fsn-1"].endpoint, ZONE, [dict(
        soa, records=[{"content": content, "disabled": False}], changetype="REPLACE")],
        timeout=5)
    stale = found(dns_lab)
    assert {(item.server, item.kind, item.problem) for item in stale} == {
        ("fsn-1", "SOA", "stale serial"), ("fsn-1", "SOA", "stale serial (rcode NOERROR)")}
    # Not mistaken for a newer publish that got there first: the next publish replaces it.
    again = publish(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, actor="test")
    assert ask(dns_lab.servers["fsn-1"].endpoint, ZONE, "SOA").serial == again.serial
    assert found(dns_lab) == []


def test_an_active_node_served_to_the_wrong_region_is_called_farther_not_unknown(
        dns_lab: DnsLab) -> None:
    publish(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, actor="test")
    ashburn = dns_lab.fleet.nodes["ash-1"].ipv4
    patch_rrsets(dns_lab.servers["fsn-1"].endpoint, ZONE, [{
        "name": EDGE, "type": "LUA", "ttl": 30, "changetype": "REPLACE",
        "records": [{"content": f'A "\'{ashburn}\'"', "disabled": False}]}], timeout=5)
    from_fsn = [item for item in found(dns_lab)
                if item.via == "dns" and item.kind == "A" and item.name == EDGE
                and item.client == dns_lab.fleet.nodes["fsn-1"].ipv4 + "/32"]
    assert [(item.server, item.answered) for item in from_fsn] == [("fsn-1", [ashburn])]
    assert from_fsn[0].problem.endswith(f"serves farther active nodes: {ashburn}")
    assert "not in the map" not in from_fsn[0].problem
