"""The full-clone services' side of the control plane: fleet-file settings and host data.

Every node runs the same services; what differs between nodes is data. Each service has a
module here that declares

- `SETTINGS`: the keys of its `[services.NAME]` table in the fleet file (`Setting`s, checked
  by the inventory loader, defaults filled in: `fleet.services[NAME]`), and
- `host_data(context) -> dict`: the pyinfra host data its deploy in `deploys/` needs for one
  node, secrets included (from the age-encrypted `SecretStore`, in memory only), and
- optionally an after-deploy hook `(context, outcome) -> None`, run by the deploy runner for
  each node once the deploy ended, to record what the deploy made true (a fact, a delivered
  token) only when the operations that did it succeeded on that node, and
- optionally a before-deploy hook `(context) -> bool`, run by the deploy runner for each
  reachable node before a real (not `--diff`) deploy is prepared, to make true what every
  node's host data in the same deploy must already reflect (an unlocker's key, granted, so
  each node's Dropbear lets it in); True when it changed something, and the runner then
  computes the host data again, and
- optionally lazy host data `(context, dry_run) -> value | None`: a value made only when a
  deploy reads its key on that node (so a drain token is issued only by a deploy that
  installs smartwatch); None leaves the key to its default, and under `dry_run`
  (`clonefleet deploy --diff`) it must return a stand-in that reveals and changes nothing.

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


@dataclass(frozen=True)
class DeployOutcome:
    """How one deploy went on one node, for the services' after-deploy hooks."""

    failed: bool  # the node failed to connect or any operation failed
    # The operations that ran and succeeded on the node, each by the name given as `name=`
    # and by its full name (with its deploys: "clonefleet node | smartwatch agent | NAME").
    succeeded: frozenset[str]


def after_deploy(context: ServiceContext, outcome: DeployOutcome) -> None:
    """Run every registered after-deploy hook (e.g. record a fact the deploy made true)."""
    from clonefleet.services.registry import AFTER_DEPLOY

    for hook in AFTER_DEPLOY:
        hook(context, outcome)


def before_deploy(context: ServiceContext) -> bool:
    """Run every registered before-deploy hook; True when any changed something."""
    from clonefleet.services.registry import BEFORE_DEPLOY

    changed = False
    for hook in BEFORE_DEPLOY:
        changed = hook(context) or changed
    return changed


# Host data keys that several services contribute to: their lists are joined, not replaced.
UNION_KEYS = frozenset({
    "clonefleet_tcp_ports", "clonefleet_udp_ports", "clonefleet_public_tcp_ports",
    "clonefleet_backend_tcp_ports", "clonefleet_backend_udp_ports",
})


def merge_host_data(data: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`data` updated with `extra` (later keys win), except that the lists of `UNION_KEYS`
    are joined (sorted, without repeats): each service adds its own ports."""
    for key, value in extra.items():
        if key in UNION_KEYS and key in data:
            data[key] = sorted(set(data[key]) | set(value))
        else:
            data[key] = value
    return data


def service_host_data(context: ServiceContext) -> dict[str, Any]:
    """Every registered service's host data for `context.node`, merged (`merge_host_data`)."""
    from clonefleet.services.registry import HOST_DATA

    data: dict[str, Any] = {}
    for provider in HOST_DATA:
        merge_host_data(data, provider(context))
    return data
