"""Errors of the DNS map. Exit codes 20-29 belong to this part."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clonefleet.errors import ClonefleetError

if TYPE_CHECKING:
    from clonefleet.dnsmap.drain import DrainResult


class DnsError(ClonefleetError):
    """Something about publishing or checking the DNS map went wrong."""

    exit_code = 20


class DrainRefused(DnsError):
    """A safety rule refuses the drain or undrain; the message says which and how to override."""

    exit_code = 21


class DnsUnreachable(DnsError):
    """The change was recorded but one or more DNS servers could not be reached."""

    exit_code = 22


class DnsMismatch(DnsError):
    """A DNS server answers differently from the map."""

    exit_code = 23


class DrainNotConfirmed(DnsError):
    """A reachable DNS server still answered with the node's old state when time ran out.

    The node's state change is recorded; `result` holds what was confirmed so far.
    """

    exit_code = 24

    def __init__(self, message: str, result: DrainResult) -> None:
        super().__init__(message)
        self.result = result


class EndpointError(DnsError):
    """A node's `dns_endpoint` fact is missing a key or has a wrong value."""

    exit_code = 25
