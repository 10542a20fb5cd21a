"""The `dns` service: PowerDNS Authoritative on every node, answering from the DNS map.

Fleet file (`[services.dns]`, all optional):

    [services.dns]
    api_port = 8081                              # PowerDNS HTTP API on each node

The DNS port (53, udp and tcp) answers everyone. The HTTP API, which can change every answer,
is allowed only from the node itself, the mesh (`[services.mesh] cidr`) and the controller's
addresses (`[fleet] controller_addresses`, see `clonefleet.services.controller`), both by
PowerDNS (`webserver-allow-from`) and by the firewall (its port goes into
`clonefleet_backend_tcp_ports`, which the base firewall opens to the mesh and to
`clonefleet_controller_addresses`, part of every node's base host data, only).

Each node has its own API key, a secret in the fleet's `SecretStore` (`pdns_api_key`). After a
deploy that configured PowerDNS on a node, `record_endpoint` stores the node's `dns_endpoint`
fact, which names that secret instead of holding the key, so `dns publish`, `dns verify` and
`drain` reach the node's own server with no extra step.
"""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path
from typing import Any

from clonefleet.dnsmap.endpoints import ENDPOINT_FACT
from clonefleet.dnsmap.errors import EndpointError
from clonefleet.dnsmap.server import NODE_CONFIG_OPERATIONS
from clonefleet.inventory import Fleet
from clonefleet.providers.registry import Setting
from clonefleet.secrets import random_token
from clonefleet.services import DeployOutcome, ServiceContext
from clonefleet.services.controller import controller_networks, is_lab_vm

NAME = "dns"
API_KEY_SECRET = "pdns_api_key"
API_PORT = 8081
DNS_PORT = 53
DEFAULT_MESH_CIDR = "10.77.0.0/24"
FORWARDED_PORTS_FACT = "forwarded_ports"  # {"tcp/8081": ["127.0.0.1", 40123], ...}

SETTINGS: dict[str, Setting] = {
    "api_port": Setting(int, "port of each node's PowerDNS HTTP API (reachable only from the "
                             "mesh and the controller)", default=API_PORT),
}


def settings(fleet: Fleet) -> dict[str, Any]:
    values = {key: setting.default for key, setting in SETTINGS.items()}
    values.update(fleet.services.get(NAME, {}))
    return values


def mesh_cidr(fleet: Fleet) -> str:
    return str(fleet.services.get("mesh", {}).get("cidr", DEFAULT_MESH_CIDR))


# The GeoIP database's build time, fixed so that its bytes depend on the fleet only. Not 0:
# PowerDNS 4.7 fails to open a database whose build_epoch is 0 ("basic_string: construction
# from null"), and then serves nothing.
GEOIP_BUILD_EPOCH = 1_767_225_600  # 2026-01-01
_GEOIP_CACHE: dict[str, str] = {}


def geoip_database(fleet: Fleet) -> str:
    """The fleet's GeoIP database of node locations (`build_geoip_database`), base64-encoded.

    The same fleet always gives the same bytes (a fixed build time), so a deploy ships it
    again only when nodes or regions changed. Built once per process and fleet content.
    """
    from clonefleet.dnsmap.geoip import build_geoip_database

    key = json.dumps([fleet.name, sorted((node.name, node.region, node.ipv4, node.ipv6)
                                         for node in fleet.nodes.values()),
                      sorted((region.name, region.latitude, region.longitude)
                             for region in fleet.regions.values())])
    if key not in _GEOIP_CACHE:
        with tempfile.TemporaryDirectory(prefix="clonefleet-geoip-") as folder:
            path = build_geoip_database(fleet, Path(folder) / "nodes.mmdb",
                                        build_epoch=GEOIP_BUILD_EPOCH)
            _GEOIP_CACHE[key] = base64.b64encode(path.read_bytes()).decode()
    return _GEOIP_CACHE[key]


def host_data(context: ServiceContext) -> dict[str, Any]:
    """One node's host data for `deploys.dns` (its API key included, in memory only)."""
    fleet, node = context.fleet, context.node
    api_port = int(settings(fleet)["api_port"])
    controller = controller_networks(fleet, node)
    return {
        "dns_api_key": context.secrets.get_or_create(node.name, API_KEY_SECRET, random_token),
        "dns_api_port": api_port,
        "dns_api_allow_from": ["127.0.0.1", "::1", mesh_cidr(fleet), *controller],
        "dns_geoip_mmdb_base64": geoip_database(fleet),
        "clonefleet_backend_tcp_ports": [api_port],
    }


def endpoint_fact(context: ServiceContext) -> dict[str, Any]:
    """The node's `dns_endpoint` fact: its public address (IPv4, else IPv6, else the recorded
    SSH host) with the standard ports, or the forwards in its `forwarded_ports` fact (a lab
    VM behind qemu's port forwards). The API key is named, never stored in clear."""
    node = context.node
    facts = context.store.facts(node.name)
    ssh = facts.get("ssh") or {}
    address = node.ipv4 or node.ipv6 or str(ssh.get("host", "") if isinstance(ssh, dict)
                                            else "")
    if not address:
        raise EndpointError(f"node {node.name!r} has no ipv4, ipv6 or recorded SSH address; "
                            "add ipv4 = ... to its table in the fleet file")
    api_port = int(settings(context.fleet)["api_port"])
    forwarded = facts.get(FORWARDED_PORTS_FACT) or {}
    api_host, api_port = _forward(node.name, forwarded, f"tcp/{api_port}", address, api_port)
    dns_host, dns_port = _forward(node.name, forwarded, f"udp/{DNS_PORT}", address, DNS_PORT)
    url_host = f"[{api_host}]" if ":" in api_host else api_host
    return {"api_url": f"http://{url_host}:{api_port}", "api_key_secret": API_KEY_SECRET,
            "dns_host": dns_host, "dns_port": dns_port, "server_id": "localhost"}


def _forward(node: str, forwarded: Any, key: str, host: str, port: int) -> tuple[str, int]:
    if not isinstance(forwarded, dict) or key not in forwarded:
        return host, port
    value = forwarded[key]
    if (not isinstance(value, (list, tuple)) or len(value) != 2 or not isinstance(value[0], str)
            or isinstance(value[1], bool) or not isinstance(value[1], int)):
        raise EndpointError(f"node {node!r}: fact {FORWARDED_PORTS_FACT}[{key!r}] is {value!r}, "
                            "not [host, port]; record e.g. [\"127.0.0.1\", 40123]")
    return value[0], value[1]


def record_endpoint(context: ServiceContext, outcome: DeployOutcome) -> None:
    """After-deploy hook: once PowerDNS is configured on the node, record how to reach it."""
    # pyinfra names an operation inside nested deploys "node | dns | NAME".
    done = {name.rsplit(" | ", 1)[-1] for name in outcome.succeeded}
    if not done >= NODE_CONFIG_OPERATIONS:
        return
    # A lab VM's fleet-file addresses are documentation addresses, never reachable: without
    # the port forwards its provider records, there is no way to reach its server yet.
    if (is_lab_vm(context.fleet, context.node)
            and not context.store.get_fact(context.node.name, FORWARDED_PORTS_FACT)):
        return
    context.store.set_fact(context.node.name, ENDPOINT_FACT, endpoint_fact(context))
