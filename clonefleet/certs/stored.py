"""The fleet's stored certificate, read back, and the rule for when to replace it.

Contract with the deploys that serve TLS: `SecretStore` scope `FLEET`, `tls_chain` (PEM,
leaf first, then the intermediates) and `tls_key` (PEM, PKCS#8), both age-encrypted.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from clonefleet.certs.keys import key_type_of
from clonefleet.secrets import FLEET, SecretStore

CHAIN = "tls_chain"
KEY = "tls_key"
ACCOUNT_KEY = "acme_account_key"
# State-store facts of FLEET_FACTS: the account URL per directory, and where the stored
# certificate came from (a changed directory_url means a new certificate).
ACCOUNT_FACT = "acme_accounts"
ISSUED_FACT = "tls_certificate"


@dataclass(frozen=True)
class CertInfo:
    names: tuple[str, ...]
    issuer: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    serial: str
    key_type: str

    def days_left(self, now: datetime.datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400


def describe(chain_pem: str) -> CertInfo:
    """What the chain's first (leaf) certificate says."""
    leaf = x509.load_pem_x509_certificates(chain_pem.encode())[0]
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(sorted(str(name).lower() for name in sans.get_values_for_type(x509.DNSName)))
    except x509.ExtensionNotFound:
        names = ()
    common = leaf.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    issuer = str(common[0].value) if common else leaf.issuer.rfc4514_string()
    return CertInfo(names=names, issuer=issuer, not_before=leaf.not_valid_before_utc,
                    not_after=leaf.not_valid_after_utc, serial=f"{leaf.serial_number:x}",
                    key_type=key_type_of(leaf.public_key()))


def stored(secrets: SecretStore) -> CertInfo | None:
    """The stored certificate's description, or None when there is none."""
    if not (secrets.has(FLEET, CHAIN) and secrets.has(FLEET, KEY)):
        return None
    return describe(secrets.get(FLEET, CHAIN))


def renewal_reason(current: CertInfo | None, names: tuple[str, ...], key_type: str,
                   renew_before_days: int | None, now: datetime.datetime,
                   issued_by: str | None = None, directory_url: str | None = None) -> str:
    """Why a new certificate is needed, or "" when the current one will do.

    `renew_before_days` None: only a certificate that no longer fits counts (issue); a number:
    also one expiring within that many days (renew). A certificate from another ACME
    directory than the one configured is replaced (moving from a test CA to a real one).
    """
    if current is None:
        return "no certificate stored"
    missing = sorted(set(names) - set(current.names))
    if missing:
        return f"not valid for {', '.join(missing)}"
    if current.not_after <= now:
        return f"expired on {current.not_after:%Y-%m-%d}"
    if current.key_type != key_type:
        return f"key is {current.key_type or 'another kind'}, not {key_type}"
    if issued_by is not None and directory_url is not None and issued_by != directory_url:
        return f"issued by {issued_by}, not the configured {directory_url}"
    days = current.days_left(now)
    if renew_before_days is not None and days < renew_before_days:
        return f"expires in {days:.1f} days (renew {renew_before_days} days before)"
    return ""
