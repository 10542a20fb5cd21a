"""The mesh: WireGuard between every node of the fleet, for backend traffic only.

Invariants:
- A node's mesh address is allocated once, by the control plane, and kept as the node fact
  `mesh_address`: the lowest free host address of the mesh CIDR, chosen inside one state-store
  transaction (two deploys allocating at once get different addresses), never handed to another
  node until its own node's facts are forgotten (when it is retired), and adding a node never
  renumbers the others.
- A node's private key is a per-node secret (`mesh_private_key`); its public key is derived on
  the controller, so peers are generated from the fleet file and the store alone.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clonefleet.errors import InventoryError, StateError
from clonefleet.providers.registry import Setting

if TYPE_CHECKING:
    from clonefleet.inventory import Fleet
    from clonefleet.services import ServiceContext
    from clonefleet.state import StateStore

NAME = "mesh"
ADDRESS_FACT = "mesh_address"  # this node's address inside the mesh CIDR, e.g. "10.77.0.1"
# the node's "10.99.0.11/24" on the fleet's private network (clonefleet.nodefacts)
PRIVATE_ADDRESS_FACT = "private_address"
ENDPOINT_FACT = "mesh_endpoint"  # "host:port" where peers reach this node (lab VMs)
PRIVATE_KEY = "mesh_private_key"  # per-node secret
KEEPALIVE = 25

SETTINGS: Mapping[str, Setting] = {
    "cidr": Setting(str, "the mesh network; every node gets one address in it",
                    default="10.77.0.0/24"),
    "port": Setting(int, "WireGuard's UDP port on every node", default=51820),
    "interface": Setting(str, "the WireGuard interface's name", default="wg0"),
}


def check(fleet_path: str, settings: Mapping[str, Any],
          nodes: Mapping[str, Any]) -> list[InventoryError]:
    """Fleet-file problems in `[services.mesh]` the types alone do not catch."""
    errors = []
    prefix = "services.mesh"
    try:
        network = ipaddress.ip_network(settings["cidr"], strict=True)
    except ValueError:
        errors.append(InventoryError(fleet_path, f"{prefix}.cidr",
                                     f"{settings['cidr']!r} is not a network",
                                     'use a private network such as "10.77.0.0/24"'))
    else:
        if network.num_addresses - 2 < len(nodes):
            errors.append(InventoryError(
                fleet_path, f"{prefix}.cidr", f"{network} has too few addresses for "
                f"{len(nodes)} nodes", "use a larger network, e.g. a /24"))
    if not 1 <= settings["port"] <= 65535:
        errors.append(InventoryError(fleet_path, f"{prefix}.port",
                                     f"{settings['port']} is not a port", "use 1-65535"))
    interface = settings["interface"]
    if not (0 < len(interface) <= 15 and interface.replace("-", "").isalnum()):
        errors.append(InventoryError(fleet_path, f"{prefix}.interface",
                                     f"{interface!r} is not an interface name",
                                     'use up to 15 letters and digits, e.g. "wg0"'))
    return errors


def network(fleet: Fleet) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(fleet.services[NAME]["cidr"])


def allocate_address(store: StateStore, fleet: Fleet, node: str) -> str:
    """The node's mesh address: the recorded one, or the lowest free one, recorded now.

    Free means not recorded for any other node: an address is released only when its node's
    facts are forgotten (retirement), even if the node left the fleet file meanwhile. The read
    and the write are one transaction, so concurrent deploys never get the same address.
    """
    mesh = network(fleet)
    recorded = store.get_fact(node, ADDRESS_FACT)
    if recorded and ipaddress.ip_address(recorded) in mesh:
        return str(recorded)
    with store.transaction():
        recorded = store.get_fact(node, ADDRESS_FACT)
        if recorded and ipaddress.ip_address(recorded) in mesh:
            return str(recorded)
        taken = {str(address) for other, address in store.fact_values(ADDRESS_FACT).items()
                 if other != node}
        for candidate in mesh.hosts():
            if str(candidate) not in taken:
                store.set_fact(node, ADDRESS_FACT, str(candidate))
                return str(candidate)
    raise StateError(f"no free address left in the mesh network {mesh} for node {node!r}; "
                     "use a larger [services.mesh] cidr")


def allocate_all(store: StateStore, fleet: Fleet) -> dict[str, str]:
    """Every node's mesh address, allocated in name order (so a new fleet's numbering follows
    its node names, whichever service asks first)."""
    return {name: allocate_address(store, fleet, name) for name in sorted(fleet.nodes)}


def generate_private_key() -> str:
    """A new WireGuard private key: base64 of the raw 32-byte X25519 key."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return base64.b64encode(X25519PrivateKey.generate().private_bytes_raw()).decode()


def public_key(private_key: str) -> str:
    """The WireGuard public key of a base64 private key (what `wg pubkey` prints)."""
    # Imported here: loading the fleet file (every command) does not need it.
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    key = X25519PrivateKey.from_private_bytes(base64.b64decode(private_key))
    return base64.b64encode(key.public_key().public_bytes_raw()).decode()


@dataclass(frozen=True)
class Peer:
    name: str
    public_key: str
    address: str  # its mesh address; the peer's AllowedIPs is this one address
    endpoint: str  # "host:port", "[v6]:port", or "" when unknown (it reaches us instead)

    def as_data(self) -> dict[str, str]:
        return {"name": self.name, "public_key": self.public_key, "address": self.address,
                "endpoint": self.endpoint}


def endpoint(store: StateStore, fleet: Fleet, name: str) -> str:
    """Where peers send a node's WireGuard packets: a recorded `mesh_endpoint`, else its
    address on the fleet's private network (the provider's, or the lab's LAN), else its
    public address; with the mesh port."""
    recorded = store.get_fact(name, ENDPOINT_FACT)
    if recorded:
        return str(recorded)
    node = fleet.nodes[name]
    port = fleet.services[NAME]["port"]
    private = str(store.get_fact(name, PRIVATE_ADDRESS_FACT) or "").split("/")[0]
    if private:
        return f"{private}:{port}" if ":" not in private else f"[{private}]:{port}"
    if node.ipv4:
        return f"{node.ipv4}:{port}"
    if node.ipv6:
        return f"[{node.ipv6}]:{port}"
    return ""


def peers(context: ServiceContext) -> list[Peer]:
    """Every other node of the fleet, in name order."""
    result = []
    for name in sorted(context.fleet.nodes):
        if name == context.node.name:
            continue
        private = context.secrets.get_or_create(name, PRIVATE_KEY, generate_private_key)
        result.append(Peer(name, public_key(private),
                           allocate_address(context.store, context.fleet, name),
                           endpoint(context.store, context.fleet, name)))
    return result


def host_data(context: ServiceContext) -> dict[str, Any]:
    settings = context.fleet.services[NAME]
    addresses = allocate_all(context.store, context.fleet)
    return {
        "mesh_interface": settings["interface"],
        "mesh_port": settings["port"],
        "mesh_cidr": str(network(context.fleet)),
        "mesh_address": addresses[context.node.name],
        "mesh_private_key": context.secrets.get_or_create(context.node.name, PRIVATE_KEY,
                                                          generate_private_key),
        "mesh_peers": [peer.as_data() for peer in peers(context)],
        "mesh_keepalive": KEEPALIVE,
    }
