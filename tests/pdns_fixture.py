"""Real PowerDNS Authoritative servers on loopback, for tests and benchmarks.

Each server is a plain `pdns_server` process with its own folder (config, SQLite database, log,
control socket), a DNS port and an HTTP API port on 127.0.0.1, run with clonefleet's own
settings (`clonefleet.dnsmap.powerdns_settings`), sized small so dozens fit on two cores.

    servers = start_powerdns_servers(3, tmp_path, [geoip_file])
    try: ... servers[0].endpoint ...
    finally: stop_all(servers)

pytest fixtures wrapping this live in tests/integration/conftest.py (`pdns_factory`).
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import requests

from clonefleet.dnsmap import Endpoint, powerdns_settings
from clonefleet.dnsmap.server import SQLITE_SCHEMA, render_config

PDNS_SERVER = shutil.which("pdns_server") or "/usr/sbin/pdns_server"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

_ports_lock = threading.Lock()
_ports_given: set[int] = set()


def powerdns_available() -> bool:
    return Path(PDNS_SERVER).exists() and SQLITE_SCHEMA.exists()


def free_port() -> int:
    """A loopback port free for both TCP and UDP (DNS uses both), never handed out twice."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        with _ports_lock:
            if port not in _ports_given:
                _ports_given.add(port)
                return port


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
