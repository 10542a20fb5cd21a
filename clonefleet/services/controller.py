"""Where the controller reaches the nodes from: the one list every service's rules use.

`[fleet] controller_addresses` names the controller's addresses or networks; a lab VM (the lab
driver's, or a fake provider's server behind `lab_routes`) also sees the controller as qemu's
gateway (its forwarded ports arrive from there). The base
firewall opens the backend ports (PowerDNS API, PostgreSQL, node exporter) to these and to
the mesh only, and PowerDNS's own `webserver-allow-from` uses the same list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clonefleet.inventory import Fleet, Node

# qemu's user network: connections forwarded from the controller (hostfwd) reach a lab VM
# from this address, so it is the controller as a lab node sees it.
LAB_CONTROLLER_ADDRESS = "10.0.2.2"


def is_lab_vm(fleet: Fleet, node: Node) -> bool:
    """Whether `node` is a lab VM: the lab driver's, or a fake provider's server whose table
    routes to its lab VM (`lab_routes = true`)."""
    if node.provider == "lab":
        return True
    config = fleet.providers.get(node.provider)
    return bool(config is not None and config.settings.get("lab_routes"))


def controller_networks(fleet: Fleet, node: Node) -> list[str]:
    """The controller's networks as `node` sees them, sorted, each once."""
    networks = set(fleet.controller_addresses)
    if is_lab_vm(fleet, node):
        networks.add(f"{LAB_CONTROLLER_ADDRESS}/32")
    return sorted(networks)
