"""Real PowerDNS Authoritative servers on loopback, for tests and benchmarks.

Each server is a plain `pdns_server` process with its own folder (config, SQLite database, log,
control socket), a DNS port and an HTTP API port on 127.0.0.1, run with clonefleet's own
settings (`clonefleet.dnsmap.powerdns_settings`), sized small so dozens fit on two cores.

    servers = start_powerdns_servers(3, tmp_path, [geoip_file])
    try: ... servers[0].endpoint ...
    finally: stop_all(servers)

pytest fixtures wrapping this live in tests/integration/conftest.py (`pdns_factory`,
`dns_lab`); the lab's fleet, client networks and `DnsLab` are defined here so test modules
can import them by a unique module name.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import requests

from clonefleet.dnsmap import Endpoint, Endpoints, powerdns_settings
from clonefleet.dnsmap.server import SQLITE_SCHEMA, render_config
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.lab.qemu import free_port
from clonefleet.state import SqliteStateStore

PDNS_SERVER = shutil.which("pdns_server") or "/usr/sbin/pdns_server"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0



def powerdns_available() -> bool:
    return Path(PDNS_SERVER).exists() and SQLITE_SCHEMA.exists()


@dataclass
class PowerDnsServer:
    """One pdns_server process. `stop()` and `start()` again keep its zones (SQLite)."""

    name: str
    directory: Path
    geoip_databases: list[Path]
    dns_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    api_key: str = "clonefleet-test-key"
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(node=self.name, api_url=f"http://127.0.0.1:{self.api_port}",
                        api_key=self.api_key, dns_host="127.0.0.1", dns_port=self.dns_port)

    @property
    def log_path(self) -> Path:
        return self.directory / "pdns.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def configure(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        database = self.directory / "pdns.sqlite3"
        if not database.exists():
            with sqlite3.connect(database) as db:
                db.executescript(SQLITE_SCHEMA.read_text())
            db.close()
        zones = self.directory / "geo-zones.yaml"
        zones.write_text("domains: []\n")
        settings = powerdns_settings(
            database=database, geoip_databases=self.geoip_databases, geoip_zones_file=zones,
            api_key=self.api_key, dns_address="127.0.0.1", dns_port=self.dns_port,
            api_address="127.0.0.1", api_port=self.api_port, small=True,
        )
        settings.update({"socket-dir": str(self.directory), "guardian": "no", "daemon": "no",
                         "disable-syslog": "yes", "write-pid": "no", "loglevel": "4"})
        (self.directory / "pdns.conf").write_text(render_config(settings))

    def launch(self) -> None:
        """Start the process without waiting for it to listen (see `wait_ready`)."""
        if self.running:
            return
        self.configure()
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [PDNS_SERVER, f"--config-dir={self.directory}", "--config-name="],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until both the API and the DNS port answer; fail with the log's tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                break
            try:
                response = requests.get(f"{self.endpoint.api_url}/api/v1/servers/localhost",
                                        headers={"X-API-Key": self.api_key}, timeout=1)
                query = dns.message.make_query("ready.invalid.", "SOA")
                dns.query.udp(query, "127.0.0.1", port=self.dns_port, timeout=1)
                if response.status_code == 200:
                    return
            except (requests.RequestException, OSError, dns.exception.DNSException):
                pass
            time.sleep(0.05)
        tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        self.stop()
        raise RuntimeError(f"PowerDNS {self.name} (dns {self.dns_port}, api {self.api_port}) "
                           f"did not come up within {timeout:.0f} s; log tail:\n{tail}")

    def start(self, timeout: float = START_TIMEOUT) -> None:
        self.launch()
        self.wait_ready(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


def start_powerdns_servers(count: int, directory: Path, geoip_databases: Sequence[Path],
                           names: Sequence[str] | None = None,
                           timeout: float = START_TIMEOUT) -> list[PowerDnsServer]:
    """Start `count` servers at once (named `names` or pdns-N); all or none are left running."""
    names = list(names) if names is not None else [f"pdns-{index}" for index in range(count)]
    if len(names) != count:
        raise ValueError(f"{count} servers but {len(names)} names")
    servers = [PowerDnsServer(name, directory / name, list(geoip_databases)) for name in names]
    try:
        for server in servers:
            server.launch()
        for server in servers:
            server.wait_ready(timeout)
    except BaseException:
        stop_all(servers)
        raise
    return servers


def stop_all(servers: Sequence[PowerDnsServer]) -> None:
    """Stop every server; signal them all first so shutdowns overlap."""
    for server in servers:
        if server.running and server.process is not None:
            server.process.terminate()
    for server in servers:
        server.stop()


# The DNS tests' lab: five nodes in three regions, and client networks near each region.

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
        store.set_state(name, "active", actor="test-setup", reason="deployed in the test")
