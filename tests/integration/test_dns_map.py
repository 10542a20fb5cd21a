"""The DNS map against real PowerDNS servers on loopback: geo answers, drain, catch-up."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pdns_fixture import CLIENT_UNKNOWN, CLIENTS, DnsLab, ServerFactory

from clonefleet.dnsmap import DrainNotConfirmed, drain_node, publish, undrain_node, verify
from clonefleet.dnsmap.powerdns import ask, patch_rrsets

pytestmark = pytest.mark.integration

EDGE = "edge.dnslab.clonefleet.test."
API = "api.dnslab.clonefleet.test."


def addresses_of(lab: DnsLab, *nodes: str, family: str = "ipv4") -> set[str]:
    return {getattr(lab.fleet.nodes[node], family) for node in nodes}


def answers(lab: DnsLab, name: str, kind: str, client: str | None) -> dict[str, set[str]]:
    return {server: set(ask(endpoint, name, kind, client=client, timeout=2).addresses)
            for server, endpoint in lab.endpoints.items()}


def test_client_in_each_region_gets_a_nearest_active_node_from_every_server(
        dns_lab: DnsLab) -> None:
    result = publish(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, actor="test")
    assert result.ok and sorted(result.pushed) == sorted(dns_lab.fleet.nodes)
    regional = {"fsn": ("fsn-1", "fsn-2"), "ash": ("ash-1", "ash-2"), "sin": ("sin-1",)}
    for region, (ipv4_client, ipv6_client) in CLIENTS.items():
        nearest_v4 = addresses_of(dns_lab, *regional[region])
        for server, got in answers(dns_lab, EDGE, "A", ipv4_client + "/24").items():
            assert len(got) == 1 and got <= nearest_v4, (server, region, got)
        if ipv6_client:
            nearest_v6 = addresses_of(dns_lab, *regional[region], family="ipv6")
            for server, got in answers(dns_lab, API, "AAAA", ipv6_client + "/48").items():
                assert len(got) == 1 and got <= nearest_v6, (server, region, got)


def test_client_with_unknown_location_gets_every_active_node(dns_lab: DnsLab) -> None:
    publish(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, actor="test")
    everyone = addresses_of(dns_lab, *dns_lab.fleet.nodes)
    for server, got in answers(dns_lab, EDGE, "A", CLIENT_UNKNOWN + "/24").items():
        assert got == everyone, server
    # Without ECS the resolver's own address (127.0.0.1) decides, and it is not in the database.
    for server, got in answers(dns_lab, EDGE, "A", None).items():
        assert got == everyone, server


def test_drained_node_is_served_by_no_server_until_undrained(dns_lab: DnsLab) -> None:
    publish(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, actor="test")
    drained = drain_node(dns_lab.fleet, dns_lab.store, "fsn-1", reason="kernel upgrade",
                         actor="test-rollout", endpoints=dns_lab.endpoints, timeout=20)
    assert drained.state == "draining"
    assert drained.confirmed == sorted(dns_lab.fleet.nodes) and drained.unreachable == []
    gone = addresses_of(dns_lab, "fsn-1") | addresses_of(dns_lab, "fsn-1", family="ipv6")
    for client in (CLIENTS["fsn"][0] + "/24", CLIENT_UNKNOWN + "/24", None):
        for kind in ("A", "AAAA"):
            for server, got in answers(dns_lab, EDGE, kind, client).items():
                assert not got & gone, (server, kind, client, got)
    # The rest of the region still takes the region's clients.
    for server, got in answers(dns_lab, EDGE, "A", CLIENTS["fsn"][0] + "/24").items():
        assert got == addresses_of(dns_lab, "fsn-2"), server

    undrained = undrain_node(dns_lab.fleet, dns_lab.store, "fsn-1", actor="test-rollout",
                             endpoints=dns_lab.endpoints, timeout=20)
    assert undrained.state == "active" and undrained.confirmed == sorted(dns_lab.fleet.nodes)
    for server, got in answers(dns_lab, EDGE, "A", CLIENT_UNKNOWN + "/24").items():
        assert addresses_of(dns_lab, "fsn-1") <= got, server
    assert verify(dns_lab.fleet, dns_lab.store, dns_lab.endpoints).ok


def test_server_down_during_drain_is_reported_and_serves_the_drain_after_next_publish(
        dns_lab: DnsLab) -> None:
    publish(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, actor="test")
    down = dns_lab.servers["sin-1"]
    down.stop()
    drained = drain_node(dns_lab.fleet, dns_lab.store, "ash-1", reason="disk replacement",
                         actor="test", endpoints=dns_lab.endpoints, timeout=20)
    assert drained.unreachable == ["sin-1"] and "sin-1" in drained.errors
    assert drained.confirmed == sorted(set(dns_lab.fleet.nodes) - {"sin-1"})
    records = {record.node: record for record in dns_lab.store.dns_servers()}
    assert not records["sin-1"].ok and records["ash-1"].serial == drained.serial

    down.start()
    # Restarted, it still holds the map from before the drain: that is what verify must see.
    stale = verify(dns_lab.fleet, dns_lab.store, dns_lab.endpoints)
    assert {item.server for item in stale.disagreements} == {"sin-1"}

    caught_up = publish(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, actor="test")
    assert caught_up.ok and "sin-1" in caught_up.pushed
    gone = addresses_of(dns_lab, "ash-1")
    got = ask(down.endpoint, EDGE, "A", client=CLIENT_UNKNOWN + "/24", timeout=2).addresses
    assert got and not got & gone
    assert verify(dns_lab.fleet, dns_lab.store, dns_lab.endpoints).ok


def test_verify_reports_a_drained_address_put_back_behind_clonefleets_back(
        dns_lab: DnsLab) -> None:
    drain_node(dns_lab.fleet, dns_lab.store, "fsn-2", reason="maintenance", actor="test",
               endpoints=dns_lab.endpoints, timeout=20)
    assert verify(dns_lab.fleet, dns_lab.store, dns_lab.endpoints).ok
    tampered = dns_lab.servers["ash-2"].endpoint
    patch_rrsets(tampered, "dnslab.clonefleet.test.", [{
        "name": EDGE, "type": "A", "ttl": 30, "changetype": "REPLACE",
        "records": [{"content": dns_lab.fleet.nodes["fsn-2"].ipv4, "disabled": False}],
    }], timeout=5)
    result = verify(dns_lab.fleet, dns_lab.store, dns_lab.endpoints)
    assert not result.ok
    assert {item.server for item in result.disagreements} == {"ash-2"}
    assert any(dns_lab.fleet.nodes["fsn-2"].ipv4 in item.answered
               and "not in the map" in item.problem for item in result.disagreements)


def test_verify_reports_a_stale_serial_on_a_server_edited_behind_clonefleets_back(
        dns_lab: DnsLab) -> None:
    published = publish(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, actor="test")
    assert published.serial is not None
    (soa_rrset,) = [rrset for rrset in published.rrsets if rrset["type"] == "SOA"]
    soa = soa_rrset["records"][0]["content"].replace(f" {published.serial} ",
                                                     f" {published.serial - 5} ")
    patch_rrsets(dns_lab.servers["sin-1"].endpoint, "dnslab.clonefleet.test.", [{
        "name": "dnslab.clonefleet.test.", "type": "SOA", "ttl": 3600, "changetype": "REPLACE",
        "records": [{"content": soa, "disabled": False}],
    }], timeout=5)
    result = verify(dns_lab.fleet, dns_lab.store, dns_lab.endpoints)
    # Seen both in the zone (API) and in the SOA answer (DNS); nothing else differs.
    assert sorted((item.server, item.via, item.kind, item.answered, item.problem)
                  for item in result.disagreements) == [
        ("sin-1", "api", "SOA", [str(published.serial - 5)], "stale serial"),
        ("sin-1", "dns", "SOA", [str(published.serial - 5)], "stale serial (rcode NOERROR)")]


def test_every_publish_has_a_new_serial_and_the_same_records(dns_lab: DnsLab) -> None:
    first = publish(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, actor="test")
    second = publish(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, actor="test")
    assert first.serial is not None and second.serial is not None
    assert second.serial > first.serial
    without_soa = [[rrset for rrset in result.rrsets if rrset["type"] != "SOA"]
                   for result in (first, second)]
    assert without_soa[0] == without_soa[1]
    for endpoint in dns_lab.endpoints.values():
        soa = ask(endpoint, "dnslab.clonefleet.test.", "SOA", timeout=2)
        assert soa.serial == second.serial
    assert verify(dns_lab.fleet, dns_lab.store, dns_lab.endpoints).ok


def test_rrset_left_over_from_a_removed_routed_name_is_deleted_on_publish(
        dns_lab: DnsLab) -> None:
    publish(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, actor="test")
    endpoint = dns_lab.servers["fsn-1"].endpoint
    leftover = "old.dnslab.clonefleet.test."
    patch_rrsets(endpoint, "dnslab.clonefleet.test.", [{
        "name": leftover, "type": "A", "ttl": 30, "changetype": "REPLACE",
        "records": [{"content": "192.0.2.99", "disabled": False}],
    }], timeout=5)
    assert ask(endpoint, leftover, "A", timeout=2).addresses == {"192.0.2.99"}
    publish(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, actor="test")
    assert ask(endpoint, leftover, "A", timeout=2).rcode == "NXDOMAIN"


def test_drain_raises_not_confirmed_when_a_reachable_server_keeps_serving_the_node(
        dns_lab: DnsLab, pdns_factory: ServerFactory) -> None:
    publish(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, actor="test")
    # ash-2's API now leads to a spare server, so ash-2's own DNS keeps the old map: a server
    # that accepts every change and goes on serving the drained node.
    (spare,) = pdns_factory(1, [dns_lab.geoip], ["spare"])
    endpoints = dns_lab.endpoints
    endpoints["ash-2"] = replace(endpoints["ash-2"], api_url=spare.endpoint.api_url)
    # The deadline only ends the wait for ash-2; the other four must confirm within it even
    # on a machine busy with lab VMs (1.5 s once was not enough there).
    with pytest.raises(DrainNotConfirmed, match=r"ash-2 still serves it") as raised:
        drain_node(dns_lab.fleet, dns_lab.store, "fsn-1", reason="x", actor="test",
                   endpoints=endpoints, timeout=6)
    assert raised.value.result.confirmed == ["ash-1", "fsn-1", "fsn-2", "sin-1"]
    assert raised.value.result.unreachable == []
    record = dns_lab.store.get("fsn-1")
    assert record is not None and record.state == "draining"
