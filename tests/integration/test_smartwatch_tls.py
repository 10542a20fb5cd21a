"""The drain endpoint over HTTPS: the agent trusts the control plane's certificate by CA file."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_text import FSN, FleetNode, fleet_toml

# The checkout's smartwatch first (an editable install made before smartwatch/ had files maps
# it as a namespace package).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clonefleet.dnsmap import DrainResult
from clonefleet.inventory import load_fleet
from clonefleet.serve import DrainService, issue_token, make_server
from clonefleet.state import SqliteStateStore
from smartwatch.drain import ACK, RETRY, DrainClient

pytestmark = pytest.mark.integration

FLEET = fleet_toml("tlstest", "tlstest.clonefleet.test", [FSN], [FleetNode("fsn-1", "fsn", "A")])


def certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "serve.pem", folder / "serve.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=clonefleet-serve", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture
def https_serve(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    (tmp_path / "tlstest.toml").write_text(FLEET)
    fleet = load_fleet(tmp_path / "tlstest.toml")
    store = SqliteStateStore(tmp_path / "state.sqlite")
    token = issue_token(fleet, store, "fsn-1")

    def drain(fleet: Any, store: Any, node: str, **options: Any) -> DrainResult:
        return DrainResult(node=node, state="draining")

    cert, key = certificate(tmp_path)
    server = make_server(DrainService(fleet, store, drain=drain), "127.0.0.1", 0,
                         tls_cert=str(cert), tls_key=str(key))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", token, cert
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    store.close()


def test_agent_drains_over_https_when_it_trusts_the_certificate(https_serve) -> None:
    url, token, cert = https_serve
    answer = DrainClient(url, token, ca_file=str(cert), timeout=10).send(
        {"node": "fsn-1", "reason": "disk failing", "request_id": "tls-1"})
    assert (answer.outcome, answer.http_status, answer.body["result"]) == \
        (ACK, 200, "drained")


def test_agent_refuses_an_untrusted_certificate_and_keeps_retrying(https_serve) -> None:
    url, token, _ = https_serve
    answer = DrainClient(url, token, timeout=10).send(
        {"node": "fsn-1", "reason": "disk failing", "request_id": "tls-2"})
    assert answer.outcome == RETRY
    assert "CERTIFICATE_VERIFY_FAILED" in answer.error


def test_client_that_never_finishes_its_tls_handshake_does_not_keep_others_out(
        https_serve) -> None:
    url, token, cert = https_serve
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
        stalled.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then silence
        answer = DrainClient(url, token, ca_file=str(cert), timeout=5).send(
            {"node": "fsn-1", "reason": "disk failing", "request_id": "tls-3"})
    assert (answer.outcome, answer.http_status) == (ACK, 200)
