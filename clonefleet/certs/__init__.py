"""The fleet's TLS certificate: one ACME certificate for every fleet host name, proven with
DNS-01 challenges that the fleet's own DNS servers answer, stored age-encrypted for the
deploys (`SecretStore`, scope `FLEET`: `tls_chain`, `tls_key`).

    result = ensure_certificate(fleet, store, secrets, renewing=True)
"""

from __future__ import annotations

from clonefleet.certs.errors import (
    AcmeRefused,
    AcmeUnreachable,
    CertError,
    ChallengeLeftOver,
    ChallengeNotPublished,
    ChallengeNotVisible,
    NoCertificate,
)
from clonefleet.certs.issue import IssueResult, ensure_certificate
from clonefleet.certs.names import certificate_names, challenge_name
from clonefleet.certs.settings import CertSettings, cert_settings
from clonefleet.certs.stored import CHAIN, KEY, CertInfo, describe, renewal_reason, stored

__all__ = [
    "CHAIN", "KEY", "AcmeRefused", "AcmeUnreachable", "CertError", "CertInfo",
    "CertSettings", "ChallengeLeftOver", "ChallengeNotPublished", "ChallengeNotVisible",
    "IssueResult", "NoCertificate", "cert_settings", "certificate_names", "challenge_name",
    "describe", "ensure_certificate", "renewal_reason", "stored",
]
