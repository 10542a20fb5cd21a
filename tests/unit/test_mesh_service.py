"""The mesh service: addresses allocated once and kept, peers and keys from the fleet file."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import pytest
from services_fixture import service_fleet

from clonefleet.errors import InventoryError, InventoryErrors, StateError
from clonefleet.services import mesh
from clonefleet.state import SqliteStateStore
from deploys._paths import render
from deploys.mesh import wireguard_variables

pytestmark = pytest.mark.unit

FOURTH_NODE = """
[nodes.ash-0]
region = "ash"
disks = ["SER-4"]
"""


def test_addresses_are_the_lowest_free_in_name_order_and_kept_when_a_node_is_added(
        tmp_path: Path) -> None:
    lab = service_fleet(tmp_path)
    first = mesh.host_data(lab.context("fsn-1"))
    before = {name: lab.store.get_fact(name, mesh.ADDRESS_FACT) for name in lab.fleet.nodes}
    assert before == {"ash-1": "10.77.0.1", "fsn-1": "10.77.0.2", "fsn-2": "10.77.0.3"}
    assert first["mesh_address"] == "10.77.0.2"

    # ash-0 sorts first, yet nobody is renumbered: it gets the next free address.
    lab.reload(FOURTH_NODE)
    data = mesh.host_data(lab.context("ash-0"))
    assert data["mesh_address"] == "10.77.0.4"
    for name, address in before.items():
        assert lab.store.get_fact(name, mesh.ADDRESS_FACT) == address


def test_a_freed_address_is_reused_only_after_its_node_is_forgotten(tmp_path: Path) -> None:
    lab = service_fleet(tmp_path)
    mesh.host_data(lab.context("fsn-1"))
    # fsn-2 leaves the fleet file but is not retired (it may come back): its address stays
    # taken, even though it was never provisioned.
    lab.fleet.nodes.pop("fsn-2")
    lab.fleet.nodes["zz-9"] = lab.fleet.nodes["ash-1"]
    assert mesh.allocate_address(lab.store, lab.fleet, "zz-9") == "10.77.0.4"
    # Retiring forgets its facts; only then is 10.77.0.3 free again.
    lab.store.delete_facts("fsn-2")
    assert mesh.allocate_address(lab.store, lab.fleet, "zz-8") == "10.77.0.3"


def test_concurrent_allocations_from_separate_connections_never_share_an_address(
        tmp_path: Path) -> None:
    lab = service_fleet(tmp_path)
    names = [f"n-{index}" for index in range(12)]
    for name in names:
        lab.fleet.nodes[name] = lab.fleet.nodes["ash-1"]
    results: dict[str, str] = {}
    barrier = threading.Barrier(len(names))

    def allocate(name: str) -> None:
        # One store object per thread, as separate deploy processes would have.
        store = SqliteStateStore(tmp_path / "state.sqlite")
        barrier.wait()
        results[name] = mesh.allocate_address(store, lab.fleet, name)

    threads = [threading.Thread(target=allocate, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == len(names)
    assert len(set(results.values())) == len(names)
    assert {lab.store.get_fact(name, mesh.ADDRESS_FACT) for name in names} == set(
        results.values())


def test_a_full_network_is_a_one_line_error(tmp_path: Path) -> None:
    lab = service_fleet(tmp_path, '[services.mesh]\ncidr = "10.9.0.0/29"\n')
    for name in sorted(lab.fleet.nodes):
        mesh.allocate_address(lab.store, lab.fleet, name)
    for extra in ("x-1", "x-2", "x-3"):
        lab.fleet.nodes[extra] = lab.fleet.nodes["ash-1"]
        mesh.allocate_address(lab.store, lab.fleet, extra)
    lab.fleet.nodes["x-4"] = lab.fleet.nodes["ash-1"]
    with pytest.raises(StateError, match=r"no free address left in the mesh network "
                                         r"10\.9\.0\.0/29 for node 'x-4'"):
        mesh.allocate_address(lab.store, lab.fleet, "x-4")


def test_peers_are_every_other_node_with_matching_keys_and_endpoints(tmp_path: Path) -> None:
    lab = service_fleet(tmp_path)
    lab.store.set_fact("ash-1", mesh.ENDPOINT_FACT, "127.0.0.1:40001")
    data = {name: mesh.host_data(lab.context(name)) for name in lab.fleet.nodes}

    for name, own in data.items():
        peers = {peer["name"]: peer for peer in own["mesh_peers"]}
        assert sorted(peers) == sorted(set(lab.fleet.nodes) - {name})  # never itself
        for peer_name, peer in peers.items():
            theirs = data[peer_name]
            assert peer["address"] == theirs["mesh_address"]
            assert peer["public_key"] == mesh.public_key(theirs["mesh_private_key"])
            assert peer["public_key"] != mesh.public_key(own["mesh_private_key"])
    fsn1 = {peer["name"]: peer["endpoint"] for peer in data["fsn-1"]["mesh_peers"]}
    assert fsn1 == {"ash-1": "127.0.0.1:40001",  # the recorded fact wins
                    "fsn-2": "[2001:db8:1::12]:51820"}  # no IPv4: the IPv6 address
    assert data["fsn-2"]["mesh_peers"][1]["endpoint"] == "192.0.2.11:51820"
    # Keys are per node and kept: a second computation gives the same ones.
    assert mesh.host_data(lab.context("fsn-1")) == data["fsn-1"]
    # A node on the fleet's private network (the lab's LAN) is reached there.
    lab.store.set_fact("fsn-2", mesh.PRIVATE_ADDRESS_FACT, "10.99.0.12/24")
    assert mesh.endpoint(lab.store, lab.fleet, "fsn-2") == "10.99.0.12:51820"


def test_public_key_is_the_x25519_public_key_wireguard_derives() -> None:
    # RFC 7748 section 6.1 test vector (Alice): WireGuard keys are these raw 32 bytes, base64.
    private = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    public = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert mesh.public_key(base64.b64encode(private).decode()) == base64.b64encode(
        public).decode()
    generated = mesh.generate_private_key()
    assert len(base64.b64decode(generated)) == 32


def test_rendered_wireguard_config_lists_peers_and_keeps_them_alive(tmp_path: Path) -> None:
    lab = service_fleet(tmp_path)
    lab.store.set_fact("ash-1", mesh.ENDPOINT_FACT, "127.0.0.1:40001")
    data = mesh.host_data(lab.context("fsn-2"))
    text = render("mesh/wg0.conf.j2", **wireguard_variables(data))

    assert "Address = 10.77.0.3/24\nListenPort = 51820\n" in text
    assert f"PrivateKey = {data['mesh_private_key']}\n" in text
    assert text.count("[Peer]") == 2
    assert text.count("PersistentKeepalive = 25") == 2
    assert "AllowedIPs = 10.77.0.1/32\nEndpoint = 127.0.0.1:40001\n" in text
    assert "AllowedIPs = 10.77.0.2/32\nEndpoint = 192.0.2.11:51820\n" in text


def test_mesh_settings_errors_name_the_key_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(InventoryErrors) as errors:
        service_fleet(tmp_path, '[services.mesh]\ncidr = "10.77.0.1/24"\nport = 70000\n'
                                'interface = "wg 0"\n')
    text = str(errors.value)
    assert "services.mesh.cidr: '10.77.0.1/24' is not a network" in text
    assert "services.mesh.port: 70000 is not a port; use 1-65535" in text
    assert "services.mesh.interface: 'wg 0' is not an interface name" in text
    with pytest.raises(InventoryError, match=r"services\.mesh\.cidr: 10\.1\.0\.0/31 has too "
                                             r"few addresses for 3 nodes"):
        service_fleet(tmp_path, '[services.mesh]\ncidr = "10.1.0.0/31"\n')
