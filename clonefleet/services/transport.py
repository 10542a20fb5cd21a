"""The `transport` service: HAProxy terminating TLS for the fleet's hostnames on every node.

Fleet file, `[services.transport]`: `hostnames` (names served besides the default ones: every
`[[routed]]` name and every node's `<node>.<domain>`) and `hsts_max_age`. Host data for
`deploys/transport.py`: the hostnames, the certificate (chain and key in one PEM, from the
secret store: `clonefleet.services.fleet_certificate`), the local app's port and health path
(from `[services.app]`), and the public ports the firewall opens (80, 443).
"""

from __future__ import annotations

from typing import Any

from clonefleet.errors import InventoryError
from clonefleet.inventory import Fleet
from clonefleet.inventory.load import DOMAIN_RE
from clonefleet.providers.registry import Setting
from clonefleet.services import ServiceContext

PUBLIC_TCP_PORTS = [80, 443]

SETTINGS = {
    "hostnames": Setting(list, "host names served besides every routed name and every node's "
                               "<node>.<domain>, e.g. [\"www.example.com\"]", default=[]),
    "hsts_max_age": Setting(int, "Strict-Transport-Security max-age in seconds (0: no header)",
                            default=63072000),
}


def fleet_hostnames(fleet: Fleet) -> list[str]:
    """Every name the fleet serves over HTTPS (the certificate's SANs), sorted.

    Raises `InventoryError` for a bad `[services.transport]` entry.
    """
    settings = fleet.services.get("transport", {})
    extra = settings.get("hostnames", [])
    for entry in extra:
        if not isinstance(entry, str) or not DOMAIN_RE.match(entry):
            raise InventoryError(str(fleet.path), "services.transport.hostnames",
                                 f"{entry!r} is not a host name",
                                 "list fully qualified names such as 'www.example.com'")
    names = {f"{routed.name}.{fleet.domain}" for routed in fleet.routed}
    names |= {f"{node}.{fleet.domain}" for node in fleet.nodes}
    return sorted(names | set(extra))


def host_data(context: ServiceContext) -> dict[str, Any]:
    # Every command that loads the fleet file imports this module: cryptography only here.
    from clonefleet.services.fleet_certificate import fleet_certificate

    fleet = context.fleet
    settings = fleet.services.get("transport", {})
    hsts = settings.get("hsts_max_age", SETTINGS["hsts_max_age"].default)
    if hsts < 0:
        raise InventoryError(str(fleet.path), "services.transport.hsts_max_age",
                             f"{hsts} is negative", "use 0 (no header) or more seconds")
    app = fleet.services.get("app", {})
    hostnames = fleet_hostnames(fleet)
    certificate = fleet_certificate(context.secrets, hostnames)
    return {
        "transport_hostnames": hostnames,
        "transport_tls_pem": certificate.pem,
        "transport_hsts_max_age": hsts,
        "transport_backend_port": app.get("port", 8080),
        "transport_backend_health_path": app.get("health_path", "/healthz"),
        "clonefleet_public_tcp_ports": list(PUBLIC_TCP_PORTS),
    }
