"""Building the map, rendering it as PowerDNS rrsets, endpoints and verify's expectations."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fleet_text import ASH, FSN, FleetNode, fleet_toml

from clonefleet.dnsmap import ENDPOINT_FACT, Endpoint, EndpointError, Endpoints
from clonefleet.dnsmap.model import build_map
from clonefleet.dnsmap.nearest import Site, arc, lua_program, nearest
from clonefleet.dnsmap.verify import VERIFY_FACT, expectations, verify
from clonefleet.dnsmap.zone import render_rrsets
from clonefleet.errors import InventoryError, StateError
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.state import FLEET_FACTS, SqliteStateStore

pytestmark = pytest.mark.unit


def fleet_text(second: dict[str, str | int]) -> str:
    """Two routed names, edge and `second`; two nodes in each of fsn and ash, one of them
    with no address at all, two with IPv6 too."""
    return fleet_toml(
        "mapping", "map.clonefleet.test", [FSN, ASH],
        [FleetNode("fsn-1", "fsn", "M-FSN1", ipv4="192.0.2.11", ipv6="2001:db8:1::11"),
         FleetNode("fsn-2", "fsn", "M-FSN2", ipv4="192.0.2.12"),
         FleetNode("ash-1", "ash", "M-ASH1", ipv4="198.51.100.21", ipv6="2001:db8:2::21"),
         FleetNode("ash-2", "ash", "M-ASH2")],
        routed=[{"name": "edge", "ttl": 20}, second])


def make_fleet(directory: Path, second: str = "api") -> Fleet:
    path = directory / "mapping.toml"
    path.write_text(fleet_text({"name": second, "ttl": 60}))
    return load_fleet(path)


@pytest.fixture
def store(tmp_path: Path) -> SqliteStateStore:
    return SqliteStateStore(tmp_path / "state.sqlite")


def lua_rrset(rrsets: list[dict[str, object]], name: str) -> list[str]:
    for rrset in rrsets:
        if rrset["name"] == name and rrset["type"] == "LUA":
            records = rrset["records"]
            assert isinstance(records, list)
            return [record["content"] for record in records]
    return []


def test_map_lists_only_active_nodes_with_addresses_behind_every_routed_name(
        tmp_path: Path, store: SqliteStateStore) -> None:
    fleet = make_fleet(tmp_path)
    for name in ("fsn-1", "fsn-2", "ash-1", "ash-2"):
        store.set_state(name, "active", actor="test")
    store.set_state("fsn-2", "draining", actor="ops", reason="disk")
    dns_map = build_map(fleet, store)
    assert dns_map.domain == "map.clonefleet.test."
    assert [entry.name for entry in dns_map.routed] == [
        "edge.map.clonefleet.test.", "api.map.clonefleet.test."]
    for entry in dns_map.routed:
        # ash-2 is active but has no address; fsn-2 is draining.
        assert [node.name for node in entry.nodes] == ["ash-1", "fsn-1"]
        assert entry.ipv4 == ("198.51.100.21", "192.0.2.11")
    drained = dns_map.node("fsn-2")
    assert (drained.state, drained.actor, drained.reason) == ("draining", "ops", "disk")


def test_node_unknown_to_the_store_is_ordered_and_not_routed(
        tmp_path: Path, store: SqliteStateStore) -> None:
    dns_map = build_map(make_fleet(tmp_path), store)
    assert {node.state for node in dns_map.nodes} == {"ordered"}
    assert all(entry.nodes == () for entry in dns_map.routed)


def test_rendered_lua_lists_exactly_the_active_addresses_per_family(
        tmp_path: Path, store: SqliteStateStore) -> None:
    fleet = make_fleet(tmp_path)
    for name in ("fsn-1", "fsn-2", "ash-1"):
        store.set_state(name, "active", actor="test")
    store.set_state("fsn-1", "drained", actor="ops", reason="x")
    rrsets = render_rrsets(build_map(fleet, store), serial=2026112301)
    programs = lua_rrset(rrsets, "edge.map.clonefleet.test.")
    ipv4 = lua_program((Site(39.04, -77.49, ("198.51.100.21",)),
                        Site(50.47, 12.37, ("192.0.2.12",))))
    ipv6 = lua_program((Site(39.04, -77.49, ("2001:db8:2::21",)),))
    assert programs == [f'A "{ipv4}"', f'AAAA "{ipv6}"']
    assert "192.0.2.11" not in " ".join(programs)
    soa = next(rrset for rrset in rrsets if rrset["type"] == "SOA")
    assert " 2026112301 " in soa["records"][0]["content"]


def test_lua_program_carries_each_place_once_with_its_addresses_and_coordinates() -> None:
    program = lua_program((Site(50.47, 12.37, ("192.0.2.11", "192.0.2.12")),
                           Site(39.04, -77.49, ("198.51.100.21",))))
    assert program.startswith(";local s={{50.47,12.37,{'192.0.2.11','192.0.2.12'}},"
                              "{39.04,-77.49,{'198.51.100.21'}}} local c=latlon() ")
    # Unknown location: every address; else great-circle distance, one of the nearest.
    assert "if c=='0.000000 0.000000' then" in program
    assert "math.asin(math.sqrt(" in program and program.endswith("return pickrandom(w)")
    assert "pickclosest" not in program


HELSINKI = Site(60.17, 24.94, ("192.0.2.61",))
FALKENSTEIN = Site(50.47, 12.37, ("192.0.2.11", "192.0.2.12"))
ASHBURN = Site(39.04, -77.49, ("198.51.100.21",))


def test_nearest_is_by_great_circle_with_ties_within_a_place() -> None:
    places = (FALKENSTEIN, HELSINKI, ASHBURN)
    # Oslo: Helsinki is ~790 km away, Falkenstein ~1055 km (flat degrees say Falkenstein).
    assert nearest(59.91, 10.75, places) == (frozenset(), {"192.0.2.61"})
    # Berlin: both Falkenstein nodes are equally near; the program picks one of them.
    assert nearest(52.52, 13.40, places) == (frozenset(), {"192.0.2.11", "192.0.2.12"})
    # Unknown location: every address, all of them required.
    everything = {"192.0.2.61", "192.0.2.11", "192.0.2.12", "198.51.100.21"}
    assert nearest(0.0, 0.0, places) == (everything, everything)
    assert 6371 * arc(59.91, 10.75, 60.17, 24.94) == pytest.approx(790, abs=10)


def test_nearest_two_requires_the_nearest_and_allows_any_tie_for_second() -> None:
    places = (FALKENSTEIN, HELSINKI, ASHBURN)
    # Oslo, 2 answers: Helsinki for sure, then either Falkenstein node.
    assert nearest(59.91, 10.75, places, 2) == (
        {"192.0.2.61"}, {"192.0.2.61", "192.0.2.11", "192.0.2.12"})
    # Asking for more than there are: all of them.
    assert nearest(59.91, 10.75, (HELSINKI, ASHBURN), 3) == (
        {"192.0.2.61", "198.51.100.21"}, {"192.0.2.61", "198.51.100.21"})


def test_lua_program_for_several_answers_sorts_by_distance_and_returns_that_many() -> None:
    program = lua_program((FALKENSTEIN, HELSINKI), 2)
    assert "table.sort(o," in program
    assert program.endswith("local w={} for i=1,math.min(2,#o) do w[i]=o[i][3] end return w")
    assert "pickrandom" not in program


def test_answers_outside_1_to_8_are_refused_when_the_fleet_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "mapping.toml"
    path.write_text(fleet_text({"name": "api", "ttl": 60, "answers": 0}))
    with pytest.raises(InventoryError, match=r"routed\[1\]\.answers: invalid answer count 0"):
        load_fleet(path)


def test_no_active_node_renders_no_routed_rrset_so_no_address_is_served(
        tmp_path: Path, store: SqliteStateStore) -> None:
    rrsets = render_rrsets(build_map(make_fleet(tmp_path), store), serial=1)
    assert lua_rrset(rrsets, "edge.map.clonefleet.test.") == []
    assert {rrset["type"] for rrset in rrsets} == {"SOA", "NS", "A", "AAAA"}


def test_routed_name_equal_to_a_node_host_name_is_refused_when_the_fleet_file_loads(
        tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match=r"routed\[1\]\.name: routed name 'fsn-1' is "
                       r"also a node's host name \(fsn-1\.map\.clonefleet\.test\); rename"):
        make_fleet(tmp_path, second="fsn-1")


def test_verify_expects_a_regions_clients_to_get_that_regions_active_nodes(
        tmp_path: Path, store: SqliteStateStore) -> None:
    fleet = make_fleet(tmp_path)
    for name in ("fsn-1", "fsn-2", "ash-1"):
        store.set_state(name, "active", actor="test")
    questions = {(q.name, q.kind, q.client): q for q in expectations(build_map(fleet, store))}
    from_fsn = questions[("edge.map.clonefleet.test.", "A", "192.0.2.11/32")]
    assert from_fsn.allowed == {"192.0.2.11", "192.0.2.12"} and not from_fsn.exactly
    anywhere = questions[("edge.map.clonefleet.test.", "A", "0.0.0.0/0")]
    assert anywhere.allowed == {"192.0.2.11", "192.0.2.12", "198.51.100.21"} and anywhere.exactly
    store.set_state("ash-1", "draining", actor="ops", reason="x")
    questions = {(q.name, q.kind, q.client): q for q in expectations(build_map(fleet, store))}
    from_ash = questions[("edge.map.clonefleet.test.", "A", "198.51.100.21/32")]
    assert from_ash.allowed == {"192.0.2.11", "192.0.2.12"}


def test_endpoint_fact_without_api_key_is_rejected_with_the_missing_key() -> None:
    with pytest.raises(EndpointError, match="lacks api_key"):
        Endpoint.from_fact("fsn-1", {"api_url": "http://127.0.0.1:8081", "dns_host": "127.0.0.1"})


def test_endpoint_fact_with_a_bad_port_is_rejected() -> None:
    fact = {"api_url": "http://x", "api_key": "k", "dns_host": "127.0.0.1", "dns_port": 70000}
    with pytest.raises(EndpointError, match="not a port"):
        Endpoint.from_fact("fsn-1", fact)


def test_endpoints_from_store_read_each_nodes_fact_and_skip_nodes_without_one(
        tmp_path: Path, store: SqliteStateStore) -> None:
    fleet = make_fleet(tmp_path)
    endpoint = Endpoint("fsn-1", "http://127.0.0.1:8081", "key", "127.0.0.1", 5300)
    store.set_fact("fsn-1", ENDPOINT_FACT, endpoint.as_fact())
    endpoints = Endpoints.from_store(fleet, store)
    assert endpoints == {"fsn-1": endpoint}
    assert endpoint.zones_url == "http://127.0.0.1:8081/api/v1/servers/localhost/zones"


def test_endpoints_from_store_leave_out_retired_nodes(
        tmp_path: Path, store: SqliteStateStore) -> None:
    fleet = make_fleet(tmp_path)
    for node in ("fsn-1", "fsn-2"):
        fact = Endpoint(node, "http://127.0.0.1:8081", "key", "127.0.0.1").as_fact()
        store.set_fact(node, ENDPOINT_FACT, fact)
    store.set_state("fsn-2", "retired", actor="ops", reason="hardware returned")
    assert sorted(Endpoints.from_store(fleet, store)) == ["fsn-1"]


def test_dns_serials_strictly_increase_and_are_at_least_the_current_time(
        store: SqliteStateStore) -> None:
    before = int(time.time())
    serials = [store.next_dns_serial("test") for _ in range(3)]
    assert serials[0] >= before
    assert serials == sorted(set(serials))
    assert store.last_dns_serial() == serials[-1]


def test_named_lock_held_elsewhere_times_out_with_a_clear_error(
        store: SqliteStateStore) -> None:
    with store.lock("dns-publish"), pytest.raises(StateError, match="still held"), \
            store.lock("dns-publish", timeout=0.2):
        pass
    with store.lock("dns-publish", timeout=0.2):
        pass  # released: taken again at once


def test_verify_keeps_its_outcome_as_a_fleet_fact_and_reaching_no_server_is_no_pass(
        tmp_path: Path, store: SqliteStateStore) -> None:
    fleet = make_fleet(tmp_path)
    before = time.time()
    result = verify(fleet, store, Endpoints({}))
    assert result.ok  # nothing disagreed...
    recorded = store.get_fact(FLEET_FACTS, VERIFY_FACT)
    assert recorded["ok"] is False  # ...but nothing was checked either
    assert recorded["at"] >= before
    assert recorded["unconfigured"] == sorted(fleet.nodes)
    assert (recorded["checked"], recorded["disagreements"]) == ([], 0)
