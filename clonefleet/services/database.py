"""The database: PostgreSQL 15, one primary and a streaming replica on every other node.

The primary is the node `[services.database] primary` names, or the alphabetically first node
when the fleet file names none (so a new fleet works without the table, and adding a node that
sorts later changes nothing). Replication runs over the mesh only: every node listens on
localhost and its mesh address, and `pg_hba` allows replication and the application only from
the mesh network, with scram-sha-256. Both passwords are fleet secrets.

Each replica has a physical replication slot on the primary (`clonefleet_<node>`), so the
primary keeps the WAL a replica that is down still needs, up to `max_slot_wal_keep_size`.
Failover is manual (see docs/services.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from clonefleet.errors import InventoryError
from clonefleet.providers.registry import Setting
from clonefleet.secrets import FLEET, random_token
from clonefleet.services import mesh

if TYPE_CHECKING:
    from clonefleet.inventory import Fleet
    from clonefleet.services import ServiceContext

NAME = "database"
REPLICATION_USER = "replicator"
REPLICATION_PASSWORD = "database_replication_password"  # fleet secret
APP_PASSWORD = "database_app_password"  # fleet secret

SETTINGS: Mapping[str, Setting] = {
    "primary": Setting(str, "the node holding the primary; every other node runs a replica "
                            "(default: the alphabetically first node)", default=""),
    "name": Setting(str, "the application's database, and its role's name", default="app"),
    "port": Setting(int, "PostgreSQL's port", default=5432),
    "max_slot_wal_keep_size": Setting(str, "WAL the primary keeps at most for a replica that "
                                           "is down (a PostgreSQL size, e.g. \"10GB\")",
                                      default="10GB"),
}


def check(fleet_path: str, settings: Mapping[str, Any],
          nodes: Mapping[str, Any]) -> list[InventoryError]:
    errors = []
    prefix = "services.database"
    primary = settings["primary"]
    if primary and primary not in nodes:
        known = ", ".join(sorted(nodes)) or "none"
        errors.append(InventoryError(fleet_path, f"{prefix}.primary",
                                     f"{primary!r} is not a node of this fleet",
                                     f"name one of: {known}"))
    name = settings["name"]
    if not (name and name[0].isalpha() and name.replace("_", "").isalnum() and name.islower()
            and len(name) <= 63):
        errors.append(InventoryError(fleet_path, f"{prefix}.name",
                                     f"{name!r} is not a plain database name",
                                     'use lowercase letters, digits and "_", e.g. "app"'))
    if not 1 <= settings["port"] <= 65535:
        errors.append(InventoryError(fleet_path, f"{prefix}.port",
                                     f"{settings['port']} is not a port", "use 1-65535"))
    size = settings["max_slot_wal_keep_size"]
    if not (size == "-1" or (size.rstrip("kMGTB").isdigit() and size[-2:] in
                             ("kB", "MB", "GB", "TB"))):
        errors.append(InventoryError(fleet_path, f"{prefix}.max_slot_wal_keep_size",
                                     f"{size!r} is not a PostgreSQL size",
                                     'use e.g. "10GB", or "-1" for no bound'))
    return errors


def primary(fleet: Fleet) -> str:
    return str(fleet.services[NAME]["primary"]) or min(fleet.nodes)


def slot_name(node: str) -> str:
    """A node's replication slot on the primary (slot names allow [a-z0-9_] only)."""
    return "clonefleet_" + node.replace("-", "_")


def host_data(context: ServiceContext) -> dict[str, Any]:
    fleet, node = context.fleet, context.node
    settings = fleet.services[NAME]
    primary_node = primary(fleet)
    port = settings["port"]
    name = settings["name"]
    addresses = mesh.allocate_all(context.store, fleet)
    primary_address, own_address = addresses[primary_node], addresses[node.name]
    return {
        "database_role": "primary" if node.name == primary_node else "replica",
        "database_primary": primary_node,
        "database_primary_host": primary_address,
        "database_primary_port": port,  # the same on every node; its own key for tests
        "database_port": port,
        "database_listen_addresses": ["localhost", own_address],
        "database_allowed_cidr": str(mesh.network(fleet)),
        "database_replication_user": REPLICATION_USER,
        "database_replication_password": context.secrets.get_or_create(
            FLEET, REPLICATION_PASSWORD, random_token),
        "database_slot": slot_name(node.name),
        "database_replica_slots": sorted(slot_name(other) for other in fleet.nodes
                                         if other != primary_node),
        "database_max_slot_wal_keep_size": settings["max_slot_wal_keep_size"],
        # Replicas need at least the primary's value, so it changes in steps of 16, rarely.
        "database_max_wal_senders": 16 * math.ceil((len(fleet.nodes) + 4) / 16),
        "database_name": name,
        "database_user": name,
        "database_password": context.secrets.get_or_create(FLEET, APP_PASSWORD, random_token),
        # Writes go to the primary over the mesh; no password in the URL, so it may be logged.
        "database_url": f"postgresql://{name}@{primary_address}:{port}/{name}",
        # Reads may use the node's own copy (a replica lags by a little).
        "database_local_url": f"postgresql://{name}@localhost:{port}/{name}",
        # Replication and the app reach it over the mesh: the firewall opens it there only.
        "clonefleet_backend_tcp_ports": [port],
    }
