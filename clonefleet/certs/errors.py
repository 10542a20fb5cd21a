"""Errors of certificate issuance. Exit codes 40-49 belong to this part."""

from __future__ import annotations

from clonefleet.errors import ClonefleetError


class CertError(ClonefleetError):
    """Obtaining or reading the fleet's certificate went wrong."""

    exit_code = 40


class AcmeUnreachable(CertError):
    """The ACME server's directory (or a later call) could not be reached."""

    exit_code = 41
    transient = True


class ChallengeNotPublished(CertError):
    """A node's DNS server could not take the challenge records: it has no DNS endpoint, or
    refused or did not answer the change."""

    exit_code = 42


class ChallengeNotVisible(CertError):
    """A node's DNS server did not answer with a published challenge record in time."""

    exit_code = 43


class AcmeRefused(CertError):
    """The ACME server refused: a failed validation, an invalid order, a rate limit."""

    exit_code = 44


class NoCertificate(CertError):
    """No certificate is stored for the fleet yet."""

    exit_code = 45


class ChallengeLeftOver(CertError):
    """The certificate was stored, but challenge records could not be removed everywhere."""

    exit_code = 46
