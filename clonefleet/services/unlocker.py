"""Unlockers on fleet nodes: the host data that puts `deploys/unlocker.py` on the nodes named
in `[unlock] unlockers`, and the after-deploy hook that grants each one's key.

Invariant: the identity is made on the node and never leaves it; the controller reads only
its public line, over the same pinned SSH access as the deploy, and registers it as
`node:<NAME>` (`clonefleet.unlockers.sync_node_unlocker`: nothing re-encrypted when it is
granted with that key already). Every deploy also revokes `node:*` unlockers whose node is
no longer in the list. A grant or revoke re-encrypts every keystore entry and mirrors it into
the store; Dropbear on each node lets the new key in (or takes the old one out) at that
node's next deploy (`clonefleet_unlock_keys`, `deploys.base`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clonefleet.services import DeployOutcome, ServiceContext

# The `name=` of the operation in deploys/unlocker.py that makes the identity
# (`deploys.unlocker.IDENTITY_OPERATION`); the key is read only where it succeeded.
IDENTITY_OPERATION = "unlocker identity"
CONFIG_DIR = "/etc/clonefleet-unlockd"


def host_data(context: ServiceContext) -> dict[str, Any]:
    placement = context.fleet.unlockers
    if context.node.name not in placement.nodes:
        return {"clonefleet_unlocker": False}
    return {"clonefleet_unlocker": True, "unlocker_store_url": placement.store_url,
            "unlocker_config_dir": CONFIG_DIR}


def read_public_key(context: ServiceContext) -> str:
    """The node's unlocker public line, read over its sshd with the pinned host key."""
    from clonefleet import nodefacts
    from clonefleet.known_hosts import fleet_known_hosts
    from clonefleet.paths import fleet_state_dir
    from clonefleet.ssh import RemoteShell, ensure_operator_key

    fleet, node = context.fleet, context.node.name
    state_dir = fleet_state_dir(fleet.name)
    known_hosts = fleet_known_hosts(state_dir)
    access = nodefacts.load_pinned(context.store, node, known_hosts).require_ssh()
    operator = ensure_operator_key(fleet.ssh_key, state_dir)
    with RemoteShell(access, operator.path, known_hosts=known_hosts.path,
                     what=f"{node} sshd") as shell:
        _, out, _ = shell.run(f"cat {CONFIG_DIR}/identity.pub", what="reading the unlocker key")
    return out.strip()


def after_deploy(context: ServiceContext, outcome: DeployOutcome,
                 read_key: Callable[[ServiceContext], str] | None = None) -> None:
    """Revoke unlockers of nodes taken off the list; grant this node's key when the deploy
    made (or found) its identity."""
    from clonefleet.paths import fleet_state_dir
    from clonefleet.unlockers import (
        NODE_PREFIX,
        fleet_keystore,
        registered,
        revoke_removed_nodes,
        sync_node_unlocker,
    )

    fleet, store, node = context.fleet, context.store, context.node.name
    wanted = node in fleet.unlockers.nodes and IDENTITY_OPERATION in outcome.succeeded
    stale = any(name.startswith(NODE_PREFIX) and name[len(NODE_PREFIX):]
                not in fleet.unlockers.nodes for name in registered(store))
    if not wanted and not stale:
        return
    keystore = fleet_keystore(fleet_state_dir(fleet.name), store)
    changed = bool(revoke_removed_nodes(store, keystore, fleet.unlockers.nodes))
    if wanted:
        key = (read_key or read_public_key)(context)
        changed = sync_node_unlocker(store, keystore, node, key) is not None or changed
    if changed or wanted:
        from clonefleet.unlockd.service import publish_config

        # What the unlockers read instead of a fleet file: the policy, regions, alert URLs.
        publish_config(store, fleet.unlock,
                       {name: value.region for name, value in fleet.nodes.items()},
                       fleet.alert_urls)
