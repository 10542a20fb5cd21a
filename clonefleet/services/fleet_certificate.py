"""The fleet's TLS certificate for HAProxy: the ACME one when issued, else a self-signed one.

ACME issuance (DNS-01) stores the certificate under the `FLEET` scope as `tls_chain` (PEM
chain, leaf first) and `tls_key` (PEM private key). Until it has run, a fresh fleet still
serves HTTPS with a self-signed certificate (ECDSA P-256, the fleet's hostnames as SANs, 90
days), created once and kept as `tls_selfsigned_chain` / `tls_selfsigned_key`; it is replaced
only when the hostnames change or it has less than `RENEW_BEFORE` left. Keys live only in the
age-encrypted secret store and in memory.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clonefleet.errors import KeystoreError
from clonefleet.secrets import FLEET, SecretStore

ACME_CHAIN, ACME_KEY = "tls_chain", "tls_key"
SELF_CHAIN, SELF_KEY = "tls_selfsigned_chain", "tls_selfsigned_key"
LIFETIME = datetime.timedelta(days=90)
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class FleetCertificate:
    chain: str  # PEM, leaf first
    key: str  # PEM private key
    self_signed: bool

    def __repr__(self) -> str:
        return f"FleetCertificate(self_signed={self.self_signed}, key=****)"

    @property
    def pem(self) -> str:
        """Chain then key, one file, as HAProxy's `crt` wants it."""
        return self.chain.rstrip("\n") + "\n" + self.key.rstrip("\n") + "\n"


def fleet_certificate(secrets: SecretStore, hostnames: Sequence[str],
                      now: Callable[[], datetime.datetime] | None = None) -> FleetCertificate:
    """The ACME certificate when stored, else the self-signed one (created when needed)."""
    if secrets.has(FLEET, ACME_CHAIN) and secrets.has(FLEET, ACME_KEY):
        chain, key = secrets.get(FLEET, ACME_CHAIN), secrets.get(FLEET, ACME_KEY)
        _check_pair(chain, key, f"{ACME_CHAIN}/{ACME_KEY}")
        return FleetCertificate(chain, key, self_signed=False)
    clock = now or (lambda: datetime.datetime.now(datetime.UTC))
    return _self_signed(secrets, sorted(set(hostnames)), clock)


def _self_signed(secrets: SecretStore, hostnames: list[str],
                 clock: Callable[[], datetime.datetime]) -> FleetCertificate:
    # The key is created exclusively, so two deploys at once agree on one key; the chain is
    # derived from it, so whichever chain is stored matches.
    key_pem = secrets.get_or_create(FLEET, SELF_KEY, _new_key)
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    if secrets.has(FLEET, SELF_CHAIN):
        chain = secrets.get(FLEET, SELF_CHAIN)
        if _still_good(chain, key_pem, hostnames, clock()):
            return FleetCertificate(chain, key_pem, self_signed=True)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    chain = _issue(key, hostnames, clock())
    secrets.put(FLEET, SELF_CHAIN, chain)
    return FleetCertificate(chain, key_pem, self_signed=True)


def _new_key() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _issue(key: ec.EllipticCurvePrivateKey, hostnames: list[str],
           now: datetime.datetime) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + LIFETIME)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hostnames]),
                       critical=False)
        # A CA flag lets clients (and tests) trust it directly as its own anchor.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def _still_good(chain: str, key_pem: str, hostnames: list[str],
                now: datetime.datetime) -> bool:
    try:
        leaf = x509.load_pem_x509_certificates(chain.encode())[0]
    except ValueError:
        return False
    if not _matches(leaf, key_pem):
        return False
    names = sorted(leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))
    return names == hostnames and leaf.not_valid_after_utc - now > RENEW_BEFORE


def _matches(leaf: x509.Certificate, key_pem: str) -> bool:
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(leaf.public_key().public_bytes(serialization.Encoding.PEM, public)
                == key.public_key().public_bytes(serialization.Encoding.PEM, public))


def _check_pair(chain: str, key_pem: str, names: str) -> None:
    """A chain whose leaf does not belong to the key would stop HAProxy on every node."""
    try:
        leaf = x509.load_pem_x509_certificates(chain.encode())[0]
        good = _matches(leaf, key_pem)
    except (ValueError, TypeError):
        good = False
    if not good:
        raise KeystoreError(f"the fleet certificate ({names}) is not a PEM chain with the "
                            "leaf of its private key; issue the certificate again")
