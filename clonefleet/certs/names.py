"""Which host names the fleet's certificate carries, and where their challenges are answered."""

from __future__ import annotations

from clonefleet.certs.settings import CertSettings
from clonefleet.inventory import Fleet

CHALLENGE_LABEL = "_acme-challenge"


def certificate_names(fleet: Fleet, settings: CertSettings) -> tuple[str, ...]:
    """Every routed name under the fleet's domain, every node's `<node>.<domain>` and the
    extra names, lowercase, without trailing dots, sorted, each once."""
    domain = fleet.domain.lower().rstrip(".")
    names = {f"{entry.name}.{domain}" for entry in fleet.routed}
    names |= {f"{node}.{domain}" for node in fleet.nodes}
    names |= set(settings.extra_names)
    return tuple(sorted(names))


def challenge_name(name: str) -> str:
    """The fully qualified TXT record name that proves control of `name` (RFC 8555 8.4); a
    wildcard's challenge is its base name's."""
    return f"{CHALLENGE_LABEL}.{name.removeprefix('*.').rstrip('.')}."
