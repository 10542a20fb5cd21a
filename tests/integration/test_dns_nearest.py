"""Great-circle routing answered by real PowerDNS: where flat latitude/longitude differences
(PowerDNS's own `pickclosest`) and distance on the globe disagree, clients get the node that
is really nearest."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fleet_text import FSN, HEL, FleetNode, FleetRegion, fleet_toml
from pdns_fixture import DnsLab, ServerFactory, activate_all, write_lab_fleet

from clonefleet.dnsmap import build_geoip_database, publish, verify
from clonefleet.dnsmap.nearest import arc
from clonefleet.dnsmap.powerdns import api_call, ask
from clonefleet.state import open_store

pytestmark = pytest.mark.integration

# Four regions where flat and great-circle distances disagree; every node has both addresses.
FLEET = fleet_toml(
    "globe", "globe.clonefleet.test",
    [HEL, FSN, FleetRegion("akl", -36.85, 174.76), FleetRegion("hnl", 21.31, -157.86)],
    [FleetNode("hel-1", "hel", "G-HEL1", ipv4="192.0.2.61", ipv6="2001:db8:6::61"),
     FleetNode("fsn-1", "fsn", "G-FSN1", ipv4="192.0.2.11", ipv6="2001:db8:1::11"),
     FleetNode("akl-1", "akl", "G-AKL1", ipv4="198.51.100.71", ipv6="2001:db8:7::71"),
     FleetNode("hnl-1", "hnl", "G-HNL1", ipv4="198.51.100.81", ipv6="2001:db8:8::81")],
    routed=[{"name": "edge", "ttl": 20}, {"name": "api", "ttl": 20, "answers": 2}])

# Client networks (documentation/shared ranges, only ever written into ECS options).
PLACES = {
    "oslo": ("100.64.10.0/24", "2001:db8:ff10::/48", 59.91, 10.75),
    "trondheim": ("100.64.11.0/24", "2001:db8:ff11::/48", 63.43, 10.39),
    # West of the antimeridian: pickclosest's longitude difference of -346° is not wrapped.
    "apia": ("100.64.12.0/24", "2001:db8:ff12::/48", -13.83, -171.76),
}
NEAREST = {"oslo": "hel-1", "trondheim": "hel-1", "apia": "akl-1"}
EDGE = "edge.globe.clonefleet.test."
API = "api.globe.clonefleet.test."  # answers = 2: the two nearest
TWO_NEAREST = {"oslo": {"hel-1", "fsn-1"}, "trondheim": {"hel-1", "fsn-1"},
               "apia": {"akl-1", "hnl-1"}}


@pytest.fixture
def globe(tmp_path: Path, pdns_factory: ServerFactory) -> DnsLab:
    fleet = write_lab_fleet(tmp_path, FLEET)
    store = open_store(tmp_path / "state" / fleet.name)
    activate_all(fleet, store)
    networks = {}
    for ipv4, ipv6, latitude, longitude in PLACES.values():
        networks[ipv4] = networks[ipv6] = (latitude, longitude)
    geoip = build_geoip_database(fleet, tmp_path / "globe.mmdb", networks)
    names = ["hel-1", "akl-1"]  # two servers are enough: each must give the same answers
    servers = dict(zip(names, pdns_factory(2, [geoip], names), strict=True))
    return DnsLab(fleet, store, servers, geoip, tmp_path / "state")


FLAT = {"oslo": "fsn-1", "trondheim": "fsn-1", "apia": "hnl-1"}


def test_powerdns_pickclosest_picks_otherwise_for_these_clients(globe: DnsLab) -> None:
    """The reason for our own program: the same servers' built-in `pickclosest` sends these
    clients to the flat-degrees nearest node (Falkenstein, Honolulu)."""
    zone = "flat.clonefleet.test."
    candidates = ",".join(f"'{node.ipv4}'" for node in globe.fleet.nodes.values())
    endpoint = globe.servers["hel-1"].endpoint
    status, _ = api_call(endpoint, "POST", "/zones", time.monotonic() + 5, {
        "name": zone, "kind": "Native", "soa_edit_api": "", "nameservers": [], "rrsets": [
            {"name": zone, "type": "SOA", "ttl": 60, "records": [
                {"content": f"a.{zone} h.{zone} 1 3600 600 604800 10", "disabled": False}]},
            {"name": f"e.{zone}", "type": "LUA", "ttl": 20, "records": [
                {"content": f'A "pickclosest({{{candidates}}})"', "disabled": False}]}]})
    assert status == 201
    for place, (ipv4_net, _, _, _) in PLACES.items():
        flat = globe.fleet.nodes[FLAT[place]].ipv4
        assert ask(endpoint, f"e.{zone}", "A", client=ipv4_net).addresses == {flat}, place
        assert FLAT[place] != NEAREST[place]
    # On the globe: Oslo–Helsinki ~790 km, Oslo–Falkenstein ~1055 km (the figures).
    assert 6371 * arc(59.91, 10.75, 60.17, 24.94) == pytest.approx(790, abs=10)
    assert 6371 * arc(59.91, 10.75, 50.47, 12.37) == pytest.approx(1055, abs=10)
    assert 6371 * arc(-13.83, -171.76, -36.85, 174.76) < 6371 * arc(-13.83, -171.76,
                                                                     21.31, -157.86)


@pytest.mark.parametrize("place", sorted(PLACES))
def test_powerdns_answers_the_great_circle_nearest_node_over_ecs(
        globe: DnsLab, place: str) -> None:
    result = publish(globe.fleet, globe.store, globe.endpoints, actor="test")
    assert result.ok, result.unreachable
    ipv4_net, ipv6_net, _, _ = PLACES[place]
    node = globe.fleet.nodes[NEAREST[place]]
    for endpoint in globe.endpoints.values():
        # Asked repeatedly: a random pick among several would show up here.
        for _ in range(5):
            assert ask(endpoint, EDGE, "A", client=ipv4_net).addresses == {node.ipv4}
            assert ask(endpoint, EDGE, "AAAA", client=ipv6_net).addresses == {node.ipv6}


@pytest.mark.parametrize("place", sorted(PLACES))
def test_a_name_with_answers_2_gets_the_two_nearest_by_great_circle(
        globe: DnsLab, place: str) -> None:
    publish(globe.fleet, globe.store, globe.endpoints, actor="test")
    ipv4_net, ipv6_net, _, _ = PLACES[place]
    nodes = [globe.fleet.nodes[name] for name in TWO_NEAREST[place]]
    for endpoint in globe.endpoints.values():
        assert ask(endpoint, API, "A", client=ipv4_net).addresses == {n.ipv4 for n in nodes}
        assert ask(endpoint, API, "AAAA", client=ipv6_net).addresses == {n.ipv6 for n in nodes}
    # From nowhere in particular: every active node, as for a single answer.
    everyone = {node.ipv4 for node in globe.fleet.nodes.values()}
    for endpoint in globe.endpoints.values():
        assert ask(endpoint, API, "A", client="0.0.0.0/0").addresses == everyone


def test_with_the_nearest_node_drained_the_next_nearest_by_great_circle_answers(
        globe: DnsLab) -> None:
    globe.store.set_state("hel-1", "draining", actor="test", reason="upgrade")
    publish(globe.fleet, globe.store, globe.endpoints, actor="test")
    oslo = PLACES["oslo"][0]
    for endpoint in globe.endpoints.values():
        assert ask(endpoint, EDGE, "A", client=oslo).addresses == {
            globe.fleet.nodes["fsn-1"].ipv4}
    # verify computes the same expectation (haversine in Python) and agrees with the servers.
    checked = verify(globe.fleet, globe.store, globe.endpoints)
    assert checked.ok, checked.disagreements
    assert sorted(checked.checked) == ["akl-1", "hel-1"]
