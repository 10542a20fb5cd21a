"""A real etcd (Debian's `etcd-server`) on loopback, for the state store's tests.

One server per test session (per xdist worker), in a temporary folder on free ports; every
test gets its own key prefix (`Backend`), so tests never see each other's keys.

    backend = Backend.etcd(server)      # or Backend.sqlite(tmp_path)
    store = backend.open()              # a fresh store object on the same data
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from clonefleet.lab.qemu import free_port
from clonefleet.state import SqliteStateStore, StateConfig, StateStore, open_store

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
START_TIMEOUT = 30.0


@dataclass
class EtcdServer:
    directory: Path
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "etcd.log"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [ETCD, "--name", "t", "--data-dir", str(self.directory / "data"),
                 "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"t={peer}"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if requests.get(f"{self.url}/health", timeout=1).json().get("health") == "true":
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.1)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"etcd did not become healthy on {self.url}; log:\n{tail}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def config(self, prefix: str) -> StateConfig:
        return StateConfig("etcd", (self.url,), prefix)


@dataclass(frozen=True)
class Backend:
    """One store's data, either a SQLite file or a prefix in the test etcd: `open()` gives a
    new store object on it, as another process would have."""

    name: str
    state_dir: Path
    config: StateConfig

    @classmethod
    def sqlite(cls, tmp_path: Path) -> Backend:
        return cls("sqlite", tmp_path, StateConfig())

    @classmethod
    def etcd(cls, server: EtcdServer, tmp_path: Path) -> Backend:
        return cls("etcd", tmp_path, server.config(f"test/{uuid.uuid4().hex}"))

    def open(self) -> StateStore:
        return open_store(self.state_dir, self.config)


def etcd_available() -> bool:
    return Path(ETCD).exists()


def running_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """A fixture's body: an etcd in a fresh temporary folder, stopped afterwards."""
    if not etcd_available():
        pytest.fail("etcd is not installed: run scripts/setup (Debian package etcd-server)")
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    yield from running_etcd(tmp_path_factory)


BACKENDS = [pytest.param("sqlite", marks=pytest.mark.unit),
            pytest.param("etcd", marks=pytest.mark.integration)]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each test once on SQLite (unit) and once on a real etcd (integration)."""
    if request.param == "etcd":
        return Backend.etcd(request.getfixturevalue("etcd_server"), tmp_path)
    return Backend.sqlite(tmp_path)


__all__ = ["Backend", "EtcdServer", "SqliteStateStore", "backend", "etcd_server",
           "running_etcd"]
