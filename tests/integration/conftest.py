"""Shared fixtures for integration tests against real PowerDNS servers on loopback.

- `pdns_factory(count, geoip_databases, names=None)` starts servers (tests/pdns_fixture.py)
  and stops every one of them when the test ends.
- `dns_lab`: a five-node, three-region fleet file, its state store with every node active,
  a GeoIP database (node addresses plus client networks per region) and one PowerDNS server
  per node, wired together as `Endpoints`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pdns_fixture import (
    PowerDnsServer,
    powerdns_available,
    start_powerdns_servers,
    stop_all,
)

from clonefleet.dnsmap import ENDPOINT_FACT, Endpoints, build_geoip_database
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.state import SqliteStateStore, open_store

LAB_FLEET = """
[fleet]
name = "dnslab"
domain = "dnslab.clonefleet.test"
min_active_total = 2
dns_grace_seconds = 1

[[routed]]
name = "edge"
ttl = 30

[[routed]]
name = "api"
ttl = 10

[regions.fsn]
provider = "lab"
location = "Falkenstein, DE"
latitude = 50.47
longitude = 12.37
min_active = 1

[regions.ash]
provider = "lab"
location = "Ashburn, US"
latitude = 39.04
longitude = -77.49
min_active = 1

[regions.sin]
provider = "lab"
location = "Singapore"
latitude = 1.35
longitude = 103.82
min_active = 0

[nodes.fsn-1]
region = "fsn"
disks = ["T-FSN1"]
ipv4 = "192.0.2.11"
ipv6 = "2001:db8:1::11"

[nodes.fsn-2]
region = "fsn"
disks = ["T-FSN2"]
ipv4 = "192.0.2.12"
ipv6 = "2001:db8:1::12"

[nodes.ash-1]
region = "ash"
disks = ["T-ASH1"]
ipv4 = "198.51.100.21"
ipv6 = "2001:db8:2::21"

[nodes.ash-2]
region = "ash"
disks = ["T-ASH2"]
ipv4 = "198.51.100.22"
ipv6 = "2001:db8:2::22"

[nodes.sin-1]
region = "sin"
disks = ["T-SIN1"]
ipv4 = "198.51.100.31"
ipv6 = "2001:db8:3::31"
"""

# Client networks (documentation and shared ranges, only ever written into ECS options, never
# contacted) placed near each region, plus one the database does not know. /24 each, because
# resolvers send /24 ECS subnets and PowerDNS looks up the network part.
CLIENT_NETWORKS = {
    "203.0.113.0/24": (52.52, 13.40),  # Berlin: nearest fsn
    "100.64.1.0/24": (40.71, -74.01),  # New York: nearest ash
    "100.64.2.0/24": (35.68, 139.69),  # Tokyo: nearest sin
    "2001:db8:ff01::/48": (48.14, 11.58),  # Munich: nearest fsn
    "2001:db8:ff02::/48": (37.77, -122.42),  # San Francisco: nearest ash
}
CLIENTS = {
    "fsn": ("203.0.113.10", "2001:db8:ff01:1::"),
    "ash": ("100.64.1.70", "2001:db8:ff02:1::"),
    "sin": ("100.64.2.130", None),
}
CLIENT_UNKNOWN = "100.64.9.200"

ServerFactory = Callable[..., list[PowerDnsServer]]


@pytest.fixture
def pdns_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Call with (count, geoip_databases, names=None); every server is stopped at teardown."""
    if not powerdns_available():
        pytest.fail("pdns_server or pdns-backend-sqlite3 is missing; see docs/dns.md "
                    "'System packages'")
    started: list[PowerDnsServer] = []

    def start(count: int, geoip_databases: Sequence[Path],
              names: Sequence[str] | None = None) -> list[PowerDnsServer]:
        servers = start_powerdns_servers(count, tmp_path_factory.mktemp("pdns"),
                                         geoip_databases, names)
        started.extend(servers)
        return servers

    yield start
    stop_all(started)


@dataclass
class DnsLab:
    fleet: Fleet
    store: SqliteStateStore
    servers: dict[str, PowerDnsServer]
    geoip: Path
    state_root: Path  # CLONEFLEET_STATE_DIR for CLI runs; the store is <root>/<fleet>/

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints({name: server.endpoint for name, server in self.servers.items()})


def write_lab_fleet(directory: Path, text: str = LAB_FLEET) -> Fleet:
    path = directory / "dnslab.toml"
    path.write_text(text)
    return load_fleet(path)


def activate_all(fleet: Fleet, store: SqliteStateStore) -> None:
    for name in fleet.nodes:
        store.transition(name, "active", actor="test-setup", reason="deployed in the test")


@pytest.fixture
def dns_lab(tmp_path: Path, pdns_factory: ServerFactory) -> Iterator[DnsLab]:
    """Five active nodes, one PowerDNS each, endpoints also stored as `dns_endpoint` facts."""
    fleet = write_lab_fleet(tmp_path)
    state_root = tmp_path / "state"
    store = open_store(state_root / fleet.name)
    activate_all(fleet, store)
    geoip = build_geoip_database(fleet, tmp_path / "geo" / "nodes.mmdb", CLIENT_NETWORKS)
    names = sorted(fleet.nodes)
    servers = dict(zip(names, pdns_factory(len(names), [geoip], names), strict=True))
    for name, server in servers.items():
        store.set_fact(name, ENDPOINT_FACT, server.endpoint.as_fact())
    yield DnsLab(fleet, store, servers, geoip, state_root)
    store.close()
