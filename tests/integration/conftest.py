"""Shared fixtures for integration tests against real PowerDNS servers on loopback.

- `pdns_factory(count, geoip_databases, names=None)` starts servers (tests/pdns_fixture.py)
  and stops every one of them when the test ends.
- `etcd_server`: one real etcd per session (tests/etcd_fixture.py).
- `dns_lab`: a five-node, three-region fleet file, its state store with every node active,
  a GeoIP database (node addresses plus client networks per region) and one PowerDNS server
  per node, wired together as `Endpoints`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from etcd_fixture import etcd_server  # noqa: F401  (a fixture: the session's etcd)
from pdns_fixture import (
    CLIENT_NETWORKS,
    CLIENT_UNKNOWN,
    CLIENTS,
    LAB_FLEET,
    DnsLab,
    PowerDnsServer,
    ServerFactory,
    activate_all,
    powerdns_available,
    start_powerdns_servers,
    stop_all,
    write_lab_fleet,
)
from sshd_fixture import Sshd, running_sshd

from clonefleet.dnsmap import ENDPOINT_FACT, build_geoip_database
from clonefleet.state import open_store

# Re-exported: test modules written against this conftest import these names from it.
__all__ = ["CLIENTS", "CLIENT_NETWORKS", "CLIENT_UNKNOWN", "LAB_FLEET", "DnsLab",
           "ServerFactory", "activate_all", "write_lab_fleet"]


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


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    """A real sshd on a loopback port (tests/sshd_fixture.py), stopped after the test."""
    yield from running_sshd(tmp_path)
