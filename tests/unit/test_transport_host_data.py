"""The transport service's host data: hostnames, certificate, ports, fleet-file errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fleet_text import FSN, FleetNode, fleet_toml

from clonefleet.errors import InventoryError
from clonefleet.inventory import load_fleet
from clonefleet.keystore import Keystore
from clonefleet.secrets import open_secrets
from clonefleet.services import ServiceContext, service_host_data
from clonefleet.services.transport import fleet_hostnames, host_data
from clonefleet.state import SqliteStateStore
from deploys.transport import haproxy_config

pytestmark = pytest.mark.unit

FLEET = fleet_toml("t", "fleet.example.com", [FSN],
                   [FleetNode("fsn-1", "fsn", "SER-1"), FleetNode("fsn-2", "fsn", "SER-2")],
                   routed=[{"name": "edge"}, {"name": "api"}])


def _context(tmp_path: Path, extra: str = "", node: str = "fsn-1") -> ServiceContext:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET + extra)
    fleet = load_fleet(path)
    secrets = open_secrets(tmp_path / "state", Keystore(tmp_path / "state" / "keystore",
                                                        tmp_path / "age.key"))
    return ServiceContext(fleet, fleet.node(node), SqliteStateStore(tmp_path / "s.sqlite"),
                          secrets)


def test_defaults_serve_every_routed_name_and_every_node_name_on_80_and_443(
        tmp_path: Path) -> None:
    data = host_data(_context(tmp_path))
    assert data["transport_hostnames"] == [
        "api.fleet.example.com", "edge.fleet.example.com", "fsn-1.fleet.example.com",
        "fsn-2.fleet.example.com"]
    assert data["clonefleet_public_tcp_ports"] == [80, 443]
    assert data["transport_hsts_max_age"] == 63072000
    assert (data["transport_backend_port"], data["transport_backend_health_path"]) == \
        (8080, "/healthz")
    pem = data["transport_tls_pem"]
    assert pem.startswith("-----BEGIN CERTIFICATE-----") and "PRIVATE KEY-----" in pem


def test_every_node_gets_the_same_fleet_certificate_and_names(tmp_path: Path) -> None:
    first = host_data(_context(tmp_path, node="fsn-1"))
    second = host_data(_context(tmp_path, node="fsn-2"))
    assert first == second


def test_extra_hostnames_hsts_and_the_apps_port_come_from_the_fleet_file(
        tmp_path: Path) -> None:
    data = host_data(_context(tmp_path, """
[services.transport]
hostnames = ["www.example.com", "edge.fleet.example.com"]
hsts_max_age = 0

[services.app]
port = 9000
health_path = "/up"
"""))
    assert "www.example.com" in data["transport_hostnames"]
    assert data["transport_hostnames"].count("edge.fleet.example.com") == 1
    assert data["transport_backend_port"] == 9000
    config = haproxy_config(data)
    assert "server app 127.0.0.1:9000 check" in config
    assert "uri /up ver HTTP/1.1" in config
    assert "Strict-Transport-Security" not in config  # hsts_max_age = 0


@pytest.mark.parametrize(("extra", "message"), [
    ('hostnames = ["not a name"]', r"services\.transport\.hostnames: 'not a name' is not a "
                                   r"host name; list fully qualified names"),
    ("hostnames = [3]", r"services\.transport\.hostnames: 3 is not a host name"),
    ("hsts_max_age = -1", r"services\.transport\.hsts_max_age: -1 is negative"),
    ('hostnames = "www.example.com"', r"services\.transport\.hostnames: expected list, got str"),
])
def test_fleet_file_mistakes_are_one_line_errors(tmp_path: Path, extra: str,
                                                 message: str) -> None:
    with pytest.raises(InventoryError, match=message):
        host_data(_context(tmp_path, f"[services.transport]\n{extra}\n"))


def test_all_services_host_data_merge_for_the_pyinfra_inventory(tmp_path: Path) -> None:
    data: dict[str, Any] = service_host_data(_context(tmp_path))
    assert data["app_port"] == data["transport_backend_port"] == 8080
    assert fleet_hostnames(_context(tmp_path).fleet) == data["transport_hostnames"]


def test_the_default_config_listens_on_all_addresses_and_keeps_metrics_on_loopback() -> None:
    config = haproxy_config({})
    assert "bind :::443 v4v6 ssl crt /etc/haproxy/certs/fleet.pem alpn h2,http/1.1" in config
    assert "bind :::80 v4v6\n" in config
    assert "bind 127.0.0.1:8404\n" in config
    assert "ssl-min-ver TLSv1.2" in config
    assert "monitor-uri /.well-known/clonefleet/health" in config
