"""The dns service's control-plane side: host data, the dns_endpoint fact its after-deploy
hook records, and how the DNS map reads that fact back (API key from the secret store)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from chroot_fixture import TWO_REGION_FLEET

from clonefleet.dnsmap import Endpoints
from clonefleet.dnsmap.endpoints import ENDPOINT_FACT, Endpoint
from clonefleet.dnsmap.errors import EndpointError
from clonefleet.dnsmap.server import NODE_CONFIG_OPERATIONS
from clonefleet.errors import InventoryError, InventoryErrors
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.keystore import Keystore
from clonefleet.secrets import SecretStore, open_secrets
from clonefleet.services import DeployOutcome, ServiceContext, after_deploy, dns, merge_host_data
from clonefleet.state import SqliteStateStore

pytestmark = pytest.mark.unit


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    path = tmp_path / "fleet.toml"
    path.write_text(TWO_REGION_FLEET.replace(
        "[fleet]\n", '[fleet]\ncontroller_addresses = ["198.51.100.7", "2001:db8:c::/64"]\n', 1)
        + '\n[services.dns]\napi_port = 8181\n')
    return load_fleet(path)


@pytest.fixture
def secrets(tmp_path: Path) -> SecretStore:
    return open_secrets(tmp_path / "state", Keystore(tmp_path / "state" / "keystore",
                                                     tmp_path / "age.key"))


@pytest.fixture
def store(tmp_path: Path) -> SqliteStateStore:
    return SqliteStateStore(tmp_path / "state" / "state.sqlite")


def context(fleet: Fleet, store: SqliteStateStore, secrets: SecretStore,
            node: str) -> ServiceContext:
    return ServiceContext(fleet, fleet.node(node), store, secrets)


def test_host_data_gives_each_node_its_own_stored_api_key_and_the_same_geoip_database(
        fleet: Fleet, store: SqliteStateStore, secrets: SecretStore) -> None:
    first = dns.host_data(context(fleet, store, secrets, "fsn-1"))
    again = dns.host_data(context(fleet, store, secrets, "fsn-1"))
    other = dns.host_data(context(fleet, store, secrets, "ash-1"))

    assert first["dns_api_key"] == again["dns_api_key"] == secrets.get("fsn-1", "pdns_api_key")
    assert other["dns_api_key"] != first["dns_api_key"] and len(first["dns_api_key"]) >= 40
    mmdb = base64.b64decode(first["dns_geoip_mmdb_base64"])
    assert b"MaxMind.com" in mmdb  # the metadata marker of a MaxMind-format file
    assert first["dns_geoip_mmdb_base64"] == other["dns_geoip_mmdb_base64"]


def test_api_is_allowed_from_the_node_the_mesh_and_the_controller_and_its_port_is_backend(
        fleet: Fleet, store: SqliteStateStore, secrets: SecretStore) -> None:
    data = dns.host_data(context(fleet, store, secrets, "fsn-1"))

    # a lab node also sees the controller as qemu's gateway
    controller = ["10.0.2.2/32", "198.51.100.7/32", "2001:db8:c::/64"]
    assert data["dns_api_allow_from"] == ["127.0.0.1", "::1", "10.77.0.0/24", *controller]
    assert data["dns_api_port"] == 8181
    assert data["clonefleet_backend_tcp_ports"] == [8181]


def test_a_bad_controller_address_is_one_line_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(TWO_REGION_FLEET.replace(
        "[fleet]\n", '[fleet]\ncontroller_addresses = ["10.0.0.1", "controller"]\n', 1))
    with pytest.raises(InventoryError) as error:
        load_fleet(path)
    [line] = str(error.value).splitlines()
    assert "fleet.controller_addresses[1]: 'controller' is not an address or network" in line


def test_the_old_places_of_the_controller_addresses_name_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "old.toml"
    path.write_text(TWO_REGION_FLEET + '\n[services.dns]\napi_allow_from = ["192.0.2.9"]\n'
                    '\n[services.mesh]\ncontroller_addresses = ["192.0.2.9"]\n')
    with pytest.raises(InventoryErrors) as errors:
        load_fleet(path)
    text = str(errors.value)
    assert "services.dns.api_allow_from: moved to [fleet] controller_addresses" in text
    assert "services.mesh.controller_addresses: moved to [fleet] controller_addresses" in text


def test_services_join_their_port_lists_instead_of_replacing_them() -> None:
    data = merge_host_data({"clonefleet_backend_tcp_ports": [8081], "x": 1},
                           {"clonefleet_backend_tcp_ports": [9100, 8081], "x": 2})
    assert data == {"clonefleet_backend_tcp_ports": [8081, 9100], "x": 2}


def succeeded(*extra: str) -> DeployOutcome:
    # as pyinfra names operations of nested deploys
    names = {f"clonefleet node | clonefleet dns | {name}" for name in NODE_CONFIG_OPERATIONS}
    return DeployOutcome(failed=False, succeeded=frozenset(names | set(extra)))


def test_hook_records_the_public_address_and_names_the_secret_without_the_key(
        tmp_path: Path, store: SqliteStateStore, secrets: SecretStore) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text(TWO_REGION_FLEET.replace('provider = "lab"', 'provider = "hetzner-cloud"')
                    + '\n[services.dns]\napi_port = 8181\n')
    fleet = load_fleet(path)
    node = context(fleet, store, secrets, "fsn-1")
    key = dns.host_data(node)["dns_api_key"]

    after_deploy(node, succeeded())

    fact = store.get_fact("fsn-1", ENDPOINT_FACT)
    assert fact == {"api_url": "http://192.0.2.11:8181", "api_key_secret": "pdns_api_key",
                    "dns_host": "192.0.2.11", "dns_port": 53, "server_id": "localhost"}
    assert key.encode() not in store.path.read_bytes()  # nowhere in the state store
    endpoint = Endpoints.from_store(fleet, store, secrets)["fsn-1"]
    assert (endpoint.api_key, endpoint.zones_url) == (
        key, "http://192.0.2.11:8181/api/v1/servers/localhost/zones")


def test_hook_uses_the_forwarded_ports_of_a_lab_vm_and_ipv6_in_brackets(
        fleet: Fleet, store: SqliteStateStore, secrets: SecretStore) -> None:
    store.set_fact("fsn-1", "forwarded_ports", {"tcp/8181": ["127.0.0.1", 40123],
                                                "udp/53": ["127.0.0.1", 40124]})
    after_deploy(context(fleet, store, secrets, "fsn-1"), succeeded())
    fact = store.get_fact("fsn-1", ENDPOINT_FACT)
    assert (fact["api_url"], fact["dns_host"], fact["dns_port"]) == (
        "http://127.0.0.1:40123", "127.0.0.1", 40124)

    store.set_fact("ash-1", "forwarded_ports", {"tcp/8181": ["::1", 40125]})
    after_deploy(context(fleet, store, secrets, "ash-1"), succeeded())
    fact = store.get_fact("ash-1", ENDPOINT_FACT)
    assert (fact["api_url"], fact["dns_host"], fact["dns_port"]) == (
        "http://[::1]:40125", "198.51.100.21", 53)


def test_hook_records_nothing_unless_every_powerdns_operation_succeeded(
        fleet: Fleet, store: SqliteStateStore, secrets: SecretStore) -> None:
    partial = frozenset(NODE_CONFIG_OPERATIONS - {"PowerDNS configuration"})
    after_deploy(context(fleet, store, secrets, "fsn-1"),
                 DeployOutcome(failed=True, succeeded=partial))
    after_deploy(context(fleet, store, secrets, "ash-1"),
                 DeployOutcome(failed=False, succeeded=frozenset({"Hostname"})))
    assert store.get_fact("fsn-1", ENDPOINT_FACT) is None
    assert store.get_fact("ash-1", ENDPOINT_FACT) is None


def test_hook_leaves_a_lab_node_without_port_forwards_unrecorded(
        fleet: Fleet, store: SqliteStateStore, secrets: SecretStore) -> None:
    after_deploy(context(fleet, store, secrets, "fsn-1"), succeeded())  # 192.0.2.11: never
    assert store.get_fact("fsn-1", ENDPOINT_FACT) is None               # reachable


def test_hook_leaves_a_fake_providers_vm_without_port_forwards_unrecorded(
        tmp_path: Path, store: SqliteStateStore, secrets: SecretStore) -> None:
    # A fake's server is a lab VM too (lab_routes): its reported address is never reachable.
    path = tmp_path / "fake.toml"
    path.write_text(TWO_REGION_FLEET.replace('provider = "lab"', 'provider = "cloud"') +
                    '\n[providers.cloud]\ndriver = "hetzner-cloud"\nlab_routes = true\n')
    after_deploy(context(load_fleet(path), store, secrets, "fsn-1"), succeeded())
    assert store.get_fact("fsn-1", ENDPOINT_FACT) is None


def test_a_malformed_forwarded_port_is_an_endpoint_error_naming_the_fact(
        fleet: Fleet, store: SqliteStateStore, secrets: SecretStore) -> None:
    store.set_fact("fsn-1", "forwarded_ports", {"udp/53": "127.0.0.1:40124"})
    with pytest.raises(EndpointError, match=r"forwarded_ports\['udp/53'\].*\[host, port\]"):
        after_deploy(context(fleet, store, secrets, "fsn-1"), succeeded())


def test_a_fact_naming_a_secret_needs_the_secret_store() -> None:
    fact = {"api_url": "http://127.0.0.1:1", "api_key_secret": "pdns_api_key",
            "dns_host": "127.0.0.1"}
    with pytest.raises(EndpointError, match="no secret store"):
        Endpoint.from_fact("fsn-1", fact)
    with pytest.raises(EndpointError, match="lacks api_key_secret"):
        Endpoint.from_fact("fsn-1", {"api_url": "http://127.0.0.1:1", "dns_host": "127.0.0.1"})
