"""`clonefleet serve` on loopback for tests: in a thread or as its own process, spoken to with
raw bytes over a socket (to send what no well-behaved client would) and scraped with the
Prometheus client library's own text parser."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fleet_text import FSN, HEL, FleetNode, fleet_toml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from clonefleet.dnsmap import DrainResult
from clonefleet.inventory import Fleet
from clonefleet.serve import DrainService, make_server
from clonefleet.state import SqliteStateStore

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 15.0
WAIT_TIMEOUT = 10.0

SERVE_FLEET = fleet_toml(
    "servelab", "servelab.clonefleet.test", [FSN, replace(HEL, min_active=0)],
    [FleetNode("fsn-1", "fsn", "A"), FleetNode("fsn-2", "fsn", "B"),
     FleetNode("hel-1", "hel", "C")])


class StubDrain:
    """Stands in for `drain_node`: records calls; with `gate`, waits for it before answering
    (and sets `entered` first), so a test can act while a drain is in progress."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.entered = threading.Event()
        self.calls: list[str] = []

    def __call__(self, fleet: Fleet, store: Any, node: str, **options: Any) -> DrainResult:
        self.calls.append(node)
        self.entered.set()
        if self.gate is not None and not self.gate.wait(WAIT_TIMEOUT):
            raise AssertionError("the test never opened the gate")
        return DrainResult(node=node, state="draining", confirmed=[])


@dataclass
class ThreadServe:
    """A `make_server` server answering from a thread; `stop()` shuts it down."""

    server: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=WAIT_TIMEOUT)


def start_thread_serve(service: DrainService, **options: Any) -> ThreadServe:
    server = make_server(service, "127.0.0.1", 0, **options)
    # A short poll interval: shutdown() waits for it, once per test.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    return ThreadServe(server, thread)


@dataclass
class ProcessServe:
    """`clonefleet serve` as its own process, logging to `log`."""

    fleet: Path
    state_root: Path
    log: Path
    arguments: list[str] = field(default_factory=list)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.port = free_port()
        env = {**os.environ, "CLONEFLEET_STATE_DIR": str(self.state_root),
               "PYTHONPATH": str(ROOT)}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from clonefleet.cli import main; main()",
                 "--fleet", str(self.fleet), "serve", "--listen", f"127.0.0.1:{self.port}",
                 *self.arguments],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=ROOT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/health",
                                            timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"clonefleet serve did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=WAIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=WAIT_TIMEOUT)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def raw_request(method: str, path: str, body: bytes = b"", *,
                headers: dict[str, str] | None = None, length: str | None = None) -> bytes:
    """Request bytes exactly as given: `length` overrides (or, as "", omits) Content-Length."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    declared = str(len(body)) if length is None else length
    if declared != "":
        lines.append(f"Content-Length: {declared}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def read_until_closed(connection: socket.socket) -> bytes:
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def parse_answer(data: bytes) -> Answer:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), headers, body)


def exchange(port: int, data: bytes, timeout: float = WAIT_TIMEOUT) -> Answer:
    """Send `data`, read until the server closes, parse the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(data)
        return parse_answer(read_until_closed(connection))


def scrape(port: int, token: str = "") -> dict[str, list[Sample]]:
    """GET /metrics, parsed by prometheus_client's parser: family name → its samples."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                     headers=bearer(token) if token else {})
    with urllib.request.urlopen(request, timeout=WAIT_TIMEOUT) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(families: dict[str, list[Sample]], sample: str, **labels: str) -> float:
    """The value of the one sample called `sample` with exactly `labels`."""
    family = sample.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
    found = [item.value for item in families.get(family, [])
             if item.name == sample and item.labels == labels]
    assert len(found) == 1, f"{sample}{labels}: {len(found)} samples in {families.get(family)}"
    return found[0]


def wait_for(condition: Callable[[], bool], what: str,
             timeout: float = WAIT_TIMEOUT) -> None:
    """Poll `condition` until true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def serve_lines(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    """What serve logged at `level` or above, one message per record."""
    return [record.getMessage() for record in caplog.records
            if record.name == "clonefleet.serve" and record.levelno >= level]


def make_store(directory: Path, fleet: Fleet) -> SqliteStateStore:
    return SqliteStateStore(directory / "state" / fleet.name / "state.sqlite")
