"""A real ACME server on loopback: Debian's `pebble` (the Let's Encrypt test CA).

Pebble serves its ACME API over HTTPS only; the Debian package ships no test certificate, so
`TestCa` makes a CA and a certificate for 127.0.0.1/localhost with `cryptography`, and the
tests trust that CA through `[services.certs] ca_bundle`. Pebble asks the DNS server given
by `-dnsserver` for DNS-01 records (here: one of the fleet's PowerDNS servers on loopback).

    pebble = start_pebble(tmp_path, dns_port)
    try: ... pebble.directory_url, pebble.ca_bundle, pebble.issuing_roots() ...
    finally: pebble.stop()
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clonefleet.lab.qemu import free_port

PEBBLE = shutil.which("pebble") or "/usr/bin/pebble"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def pebble_available() -> bool:
    return Path(PEBBLE).exists()


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_test_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a 127.0.0.1/localhost server certificate it signed, for pebble's HTTPS;
    returns (ca.pem, cert.pem, key.pem)."""
    import ipaddress

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("clonefleet test CA"))
          .issuer_name(_name("clonefleet test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name("localhost"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem_key(key))
    return paths


@dataclass
class Pebble:
    directory: Path
    dns_port: int
    ca_bundle: Path
    acme_port: int
    management_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.acme_port}/dir"

    @property
    def log_path(self) -> Path:
        return self.directory / "pebble.log"

    def issuing_root(self) -> x509.Certificate:
        """The root its certificates chain to (from the management interface)."""
        response = requests.get(f"https://127.0.0.1:{self.management_port}/roots/0",
                                verify=str(self.ca_bundle), timeout=5)
        response.raise_for_status()
        return x509.load_pem_x509_certificate(response.content)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


def start_pebble(directory: Path, dns_port: int, timeout: float = START_TIMEOUT) -> Pebble:
    """Run pebble on loopback ports, asking 127.0.0.1:`dns_port` for DNS; wait for its
    directory to answer. Stopped again if it does not come up."""
    ca, cert, key = write_test_ca(directory / "tls")
    pebble = Pebble(directory, dns_port, ca, free_port(), free_port())
    config = directory / "pebble-config.json"
    config.write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{pebble.acme_port}",
        "managementListenAddress": f"127.0.0.1:{pebble.management_port}",
        "certificate": str(cert), "privateKey": str(key),
        # Only DNS-01 is used; these ports just must not collide with anything.
        "httpPort": free_port(), "tlsPort": free_port(),
        "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
    environment = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0",
                       # Every order proves its names again, so each issuance in a test
                       # really goes through the DNS records.
                       PEBBLE_AUTHZREUSE="0")
    log = pebble.log_path.open("ab")
    try:
        pebble.process = subprocess.Popen(
            [PEBBLE, "-config", str(config), "-dnsserver", f"127.0.0.1:{dns_port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environment,
            cwd=directory)
    finally:
        log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pebble.process.poll() is None:
        try:
            if requests.get(pebble.directory_url, verify=str(ca), timeout=1).ok:
                return pebble
        except requests.RequestException:
            pass
        time.sleep(0.1)
    pebble.stop()
    raise RuntimeError(f"pebble did not come up within {timeout:.0f} s; log:\n"
                       f"{pebble.log()[-2000:]}")
