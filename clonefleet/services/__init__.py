"""The full-clone services' side of the control plane: fleet-file settings and host data.

Every node runs the same services; what differs between nodes is data. Each service has a
module here that declares

- `SETTINGS`: the keys of its `[services.NAME]` table in the fleet file (`Setting`s, checked
  by the inventory loader, defaults filled in: `fleet.services[NAME]`), and
- `host_data(context) -> dict`: the pyinfra host data its deploy in `deploys/` needs for one
  node, secrets included (from the age-encrypted `SecretStore`, in memory only).

`registry.py` lists them; `clonefleet.pyinfra_inventory` merges every service's host data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clonefleet.inventory import Fleet, Node
    from clonefleet.secrets import SecretStore
    from clonefleet.state import StateStore


@dataclass(frozen=True)
class ServiceContext:
    """What a service needs to compute one node's host data."""

    fleet: Fleet
    node: Node
    store: StateStore
    secrets: SecretStore


def service_host_data(context: ServiceContext) -> dict[str, Any]:
    """Every registered service's host data for `context.node`, merged."""
    from clonefleet.services.registry import HOST_DATA

    data: dict[str, Any] = {}
    for provider in HOST_DATA:
        data.update(provider(context))
    return data
