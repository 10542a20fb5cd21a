"""Which host names the fleet's certificate carries, and where their challenges are answered."""

from __future__ import annotations

from clonefleet.certs.settings import CertSettings
from clonefleet.inventory import Fleet

CHALLENGE_LABEL = "_acme-challenge"


def certificate_names(fleet: Fleet, settings: CertSettings) -> tuple[str, ...]:
    """Every name the nodes serve over HTTPS (the transport's host names: routed names, each
    node's `<node>.<domain>`, `[services.transport] hostnames`) and the extra names,
    lowercase, without trailing dots, sorted, each once: the certificate HAProxy gets must
    cover every name it answers for."""
    from clonefleet.services.transport import fleet_hostnames

    names = {name.lower().rstrip(".") for name in fleet_hostnames(fleet)}
    names |= set(settings.extra_names)
    return tuple(sorted(names))


def challenge_name(name: str) -> str:
    """The fully qualified TXT record name that proves control of `name` (RFC 8555 8.4); a
    wildcard's challenge is its base name's."""
    return f"{CHALLENGE_LABEL}.{name.removeprefix('*.').rstrip('.')}."
