"""The transport's HAProxy configuration, rendered by the deploy's own code, in a real HAProxy
in front of the real demo app, all on loopback: TLS with SNI and the fleet certificate, HTTP/2
by ALPN, no TLS 1.1, HTTP redirected, the health URL following the app, and `haproxy -c`
refusing what the deploy must never put live."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clonefleet.keystore import Keystore
from clonefleet.retry import RetryPolicy, wait_until
from clonefleet.secrets import open_secrets
from clonefleet.services.fleet_certificate import fleet_certificate
from deploys._paths import template
from deploys.transport import CHECK, HEALTH_URI, haproxy_config, served_certificate_command

pytestmark = pytest.mark.integration

HOSTNAMES = ["edge.lab.clonefleet.test", "fsn-1.lab.clonefleet.test"]
FAST = RetryPolicy(first=0.1, cap=0.5, factor=1.5, jitter=0.0)
TIMEOUT = 5.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_open(port: int) -> bool | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return None


@dataclass
class Transport:
    folder: Path
    chain: str  # the certificate clients trust (self-signed: its own CA)
    http_port: int
    https_port: int
    stats_port: int
    app: subprocess.Popen[bytes]
    haproxy: subprocess.Popen[bytes]

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.chain)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def tls_socket(self, hostname: str, context: ssl.SSLContext) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.https_port), timeout=TIMEOUT)
        try:
            return context.wrap_socket(raw, server_hostname=hostname)
        except BaseException:
            raw.close()
            raise

    def https_get(self, hostname: str, path: str) -> http.client.HTTPResponse:
        context = self.tls_context()
        context.set_alpn_protocols(["http/1.1"])
        connection = http.client.HTTPSConnection(hostname, self.https_port, context=context,
                                                 timeout=TIMEOUT)
        # Connect to loopback but speak TLS (SNI, certificate check) for `hostname`.
        connection.sock = self.tls_socket(hostname, context)
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        connection.close()
        return response

    def http_get(self, path: str) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=TIMEOUT)
        connection.request("GET", path, headers={"Host": HOSTNAMES[0]})
        response = connection.getresponse()
        response.read()
        connection.close()
        return response


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=TIMEOUT)


def _config(folder: Path, cert_path: Path, ports: dict[str, int]) -> str:
    return haproxy_config({
        "transport_hostnames": HOSTNAMES,
        "transport_listen_addresses": ["127.0.0.1"],
        "transport_http_port": ports["http"],
        "transport_https_port": ports["https"],
        "transport_stats_port": ports["stats"],
        "transport_backend_port": ports["app"],
        "transport_backend_health_path": "/healthz",
        "transport_cert_path": str(cert_path),
        "transport_chroot": str(folder / "chroot"),
        "transport_stats_socket": str(folder / "admin.sock"),
    })


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[Transport]:
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is missing: install Debian's haproxy (scripts/setup)")
    secrets = open_secrets(tmp_path / "state", Keystore(tmp_path / "state" / "keystore",
                                                        tmp_path / "age.key"))
    certificate = fleet_certificate(secrets, HOSTNAMES)
    cert_path = tmp_path / "fleet.pem"
    cert_path.write_text(certificate.pem)
    cert_path.chmod(0o600)
    (tmp_path / "chroot").mkdir()
    ports = {name: free_port() for name in ("http", "https", "stats", "app")}
    config = tmp_path / "haproxy.cfg"
    config.write_text(_config(tmp_path, cert_path, ports))

    app = subprocess.Popen(
        ["/usr/bin/python3", template("app/demo_app.py")],
        env={"HOST": "127.0.0.1", "PORT": str(ports["app"]), "CLONEFLEET_NODE": "fsn-1",
             "CLONEFLEET_REGION": "fsn", "CLONEFLEET_HEALTH_PATH": "/healthz",
             "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        stderr=subprocess.DEVNULL)
    haproxy: subprocess.Popen[bytes] | None = None
    try:
        # As the node deploy does: the app first, so HAProxy's first checks find it up.
        wait_until(lambda: port_open(ports["app"]), what="demo app", timeout=TIMEOUT,
                   policy=FAST, transient=lambda error: False)
        haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(config)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        running = Transport(tmp_path, certificate.chain, ports["http"], ports["https"],
                            ports["stats"], app, haproxy)
        wait_until(lambda: True if running.http_get(HEALTH_URI).status == 200 else None,
                   what="HAProxy's health URL", timeout=10, policy=FAST)
        yield running
    finally:
        if haproxy is not None:
            _stop(haproxy)
        _stop(app)


def test_https_with_sni_reaches_the_app_with_the_fleet_certificate_and_hsts(
        transport: Transport) -> None:
    for hostname in HOSTNAMES:
        assert transport.https_get(hostname, "/").status == 200
    context = transport.tls_context()
    with transport.tls_socket("edge.lab.clonefleet.test", context) as tls:
        peer = tls.getpeercert()
        assert ("DNS", "edge.lab.clonefleet.test") in peer["subjectAltName"]
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        tls.sendall(b"GET / HTTP/1.1\r\nHost: edge.lab.clonefleet.test\r\n"
                    b"Connection: close\r\n\r\n")
        response = http.client.HTTPResponse(tls)  # type: ignore[arg-type]
        response.begin()
        body = json.loads(response.read())
    assert response.status == 200
    assert body["node"] == "fsn-1" and body["region"] == "fsn" and body["served_at"]
    assert response.getheader("Strict-Transport-Security") == "max-age=63072000"


def test_a_name_the_certificate_does_not_cover_fails_verification(
        transport: Transport) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        transport.https_get("other.example.com", "/")


def test_alpn_negotiates_http2(transport: Transport) -> None:
    context = transport.tls_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    with transport.tls_socket(HOSTNAMES[0], context) as tls:
        assert tls.selected_alpn_protocol() == "h2"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_1_is_refused_by_the_server(transport: Transport) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # This client would do TLS 1.1 (security level 0 re-enables it on OpenSSL 3) ...
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    # ... and it is the server that says no: a protocol version alert.
    with pytest.raises(ssl.SSLError, match="TLSV1_ALERT_PROTOCOL_VERSION"):
        transport.tls_socket(HOSTNAMES[0], context).close()
    # The same client allowed TLS 1.2 gets through.
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with transport.tls_socket(HOSTNAMES[0], context) as tls:
        assert tls.version() == "TLSv1.2"


def test_http_redirects_to_https(transport: Transport) -> None:
    response = transport.http_get("/some/page?x=1")
    assert response.status == 301
    assert response.getheader("Location") == f"https://{HOSTNAMES[0]}/some/page?x=1"


def test_health_url_follows_the_app(transport: Transport) -> None:
    healthy = transport.https_get(HOSTNAMES[0], HEALTH_URI)
    assert healthy.status == 200
    # HAProxy answers it itself, with the HSTS header every HTTPS answer carries.
    assert healthy.getheader("Strict-Transport-Security") == "max-age=63072000"
    assert transport.http_get(HEALTH_URI).status == 200  # no redirect, no certificate needed

    _stop(transport.app)

    def unhealthy() -> bool | None:
        return True if transport.https_get(HOSTNAMES[0], HEALTH_URI).status == 503 else None

    # Checks every 2 s, down after 2 failures.
    wait_until(unhealthy, what="health URL answers 503", timeout=15, policy=FAST,
               transient=lambda error: False)
    assert transport.http_get(HEALTH_URI).status == 503
    assert transport.https_get(HOSTNAMES[0], "/").status == 503  # no server for the app


def test_metrics_are_served_on_loopback(transport: Transport) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", transport.stats_port, timeout=TIMEOUT)
    connection.request("GET", "/metrics")
    response = connection.getresponse()
    text = response.read().decode()
    assert response.status == 200
    assert "haproxy_process_" in text
    assert 'haproxy_server_status{proxy="app",server="app"' in text


def test_haproxy_check_refuses_what_the_deploy_must_not_put_live(tmp_path: Path) -> None:
    """The deploy runs CHECK on the candidate before it replaces the live configuration."""
    ports = {name: free_port() for name in ("http", "https", "stats", "app")}
    (tmp_path / "chroot").mkdir()
    candidate = tmp_path / "haproxy.cfg.candidate"

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(CHECK.format(path=candidate), shell=True, capture_output=True,
                              text=True, timeout=30)

    # A configuration whose certificate is missing.
    candidate.write_text(_config(tmp_path, tmp_path / "missing.pem", ports))
    result = check()
    assert result.returncode != 0 and "missing.pem" in result.stdout + result.stderr
    # A broken line (a bad health path value).
    secrets = open_secrets(tmp_path / "state", Keystore(tmp_path / "state" / "keystore",
                                                        tmp_path / "age.key"))
    cert_path = tmp_path / "fleet.pem"
    cert_path.write_text(fleet_certificate(secrets, HOSTNAMES).pem)
    good = _config(tmp_path, cert_path, ports)
    candidate.write_text(good)
    assert check().returncode == 0
    candidate.write_text(good.replace("http-check expect status 200",
                                      "http-check expect statuss 200"))
    assert check().returncode != 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-n", "0"]))


def test_the_deploy_waits_until_a_reloaded_haproxy_serves_the_new_certificate(
        tmp_path: Path) -> None:
    """The deploy's wait after a reload, on a real HAProxy in master-worker mode (as Debian's
    unit runs it): it fails while the old certificate is served, passes once the reload
    took the new one."""
    secrets = open_secrets(tmp_path / "state", Keystore(tmp_path / "state" / "keystore",
                                                        tmp_path / "age.key"))
    old = fleet_certificate(secrets, HOSTNAMES)
    new = fleet_certificate(open_secrets(tmp_path / "other", Keystore(
        tmp_path / "other" / "keystore", tmp_path / "other.key")), HOSTNAMES)
    assert old.pem != new.pem
    cert_path = tmp_path / "fleet.pem"
    cert_path.write_text(old.pem)
    (tmp_path / "chroot").mkdir()
    ports = {name: free_port() for name in ("http", "https", "stats", "app")}
    config = tmp_path / "haproxy.cfg"
    config.write_text(_config(tmp_path, cert_path, ports))
    data = {"transport_listen_addresses": ["127.0.0.1"], "transport_https_port": ports["https"],
            "transport_cert_path": str(cert_path)}
    haproxy = subprocess.Popen(["haproxy", "-W", "-db", "-f", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: port_open(ports["https"]), what="HAProxy", timeout=10, policy=FAST)
        served = subprocess.run(["sh", "-c", served_certificate_command(data, timeout=5)],
                                capture_output=True, text=True, timeout=60)
        assert served.returncode == 0, served.stderr

        cert_path.write_text(new.pem)  # deployed, not reloaded yet: the old one is served
        stale = subprocess.run(["sh", "-c", served_certificate_command(data, timeout=2)],
                               capture_output=True, text=True, timeout=60)
        assert stale.returncode == 1
        assert f"still serves another certificate than {cert_path}" in stale.stderr

        haproxy.send_signal(signal.SIGUSR2)  # what `systemctl reload haproxy` sends
        reloaded = subprocess.run(["sh", "-c", served_certificate_command(data, timeout=30)],
                                  capture_output=True, text=True, timeout=90)
        assert reloaded.returncode == 0, reloaded.stderr
    finally:
        _stop(haproxy)
