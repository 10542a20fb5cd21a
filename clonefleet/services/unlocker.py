"""Unlockers on fleet nodes: the host data that puts `deploys/unlocker.py` on the nodes named
in `[unlock] unlockers`, and the deploy hooks that grant each one's key.

Invariant: the identity is made on the node and never leaves it; the controller reads only
its public line, over the same pinned SSH access as the deploy, and registers it as
`node:<NAME>` (`clonefleet.unlockers.sync_node_unlocker`: nothing re-encrypted when it is
granted with that key already).

Before a deploy, a listed node whose key is not granted yet gets its identity made (the same
command as the deploy's identity step: never replaced when present) and granted, and nodes no
longer listed are revoked, so the host data of that same deploy already carries the change
and every node it deploys lets the new key into Dropbear, or takes the old one out
(`clonefleet_unlock_keys`, `deploys.base`): one deploy of the fleet converges. After the
deploy, the node's key is read again and granted if it differs (an identity made by the
deploy itself, e.g. when the node could not be reached before). Nodes left out of a deploy
get the new Dropbear keys at their next one.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clonefleet.keystore import Keystore
    from clonefleet.services import DeployOutcome, ServiceContext

# The `name=` of the operation in deploys/unlocker.py that makes the identity; the key is
# read after the deploy only where it succeeded.
IDENTITY_OPERATION = "unlocker identity"
CONFIG_DIR = "/etc/clonefleet-unlockd"

KeyReader = Callable[["ServiceContext"], str]


def host_data(context: ServiceContext) -> dict[str, Any]:
    placement = context.fleet.unlockers
    if context.node.name not in placement.nodes:
        return {"clonefleet_unlocker": False}
    from clonefleet.services.controller import LAB_CONTROLLER_ADDRESS, is_lab_vm

    return {"clonefleet_unlocker": True, "unlocker_store_url": placement.store_url,
            "unlocker_config_dir": CONFIG_DIR,
            # A lab VM reaches the other VMs' recorded addresses (forwarded ports on the
            # controller's loopback) at qemu's gateway.
            "unlocker_loopback_as": LAB_CONTROLLER_ADDRESS
            if is_lab_vm(context.fleet, context.node) else ""}


def make_identity_command(path: str, comment: str) -> str:
    """Shell: an unencrypted ed25519 key at `path` (0600, its folder 0700) and `path`.pub,
    made only when absent (an existing key is never replaced; a lost .pub is derived again)."""
    key, folder = shlex.quote(path), shlex.quote(path.rsplit("/", 1)[0] or "/")
    return (f"umask 077 && mkdir -p {folder} && "
            f"{{ [ -e {key} ] || ssh-keygen -q -t ed25519 -N '' -C {shlex.quote(comment)} "
            f"-f {key}; }} && {{ [ -e {key}.pub ] || ssh-keygen -y -f {key} > {key}.pub; }}")


def _over_ssh(context: ServiceContext, command: str, what: str) -> str:
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
        _, out, _ = shell.run(command, what=what)
    return out.strip()


def read_public_key(context: ServiceContext) -> str:
    """The node's unlocker public line, read over its sshd with the pinned host key."""
    return _over_ssh(context, f"cat {CONFIG_DIR}/identity.pub", "reading the unlocker key")


def make_identity(context: ServiceContext) -> str:
    """Make the node's unlocker identity on the node if absent; its public line."""
    command = make_identity_command(f"{CONFIG_DIR}/identity",
                                    f"unlocker@{context.node.name}")
    return _over_ssh(context, f"{command} && cat {CONFIG_DIR}/identity.pub",
                     "making the unlocker identity")


def _keystore(context: ServiceContext) -> Keystore:
    from clonefleet.paths import fleet_state_dir
    from clonefleet.unlockers import fleet_keystore

    return fleet_keystore(fleet_state_dir(context.fleet.name), context.store)


def _stale(context: ServiceContext) -> bool:
    from clonefleet.unlockers import NODE_PREFIX, registered

    return any(name.startswith(NODE_PREFIX)
               and name[len(NODE_PREFIX):] not in context.fleet.unlockers.nodes
               for name in registered(context.store))


def _publish(context: ServiceContext) -> None:
    from clonefleet.unlockd.service import publish_config

    # What the unlockers read instead of a fleet file: the policy, regions, alert URLs.
    fleet = context.fleet
    publish_config(context.store, fleet.unlock,
                   {name: value.region for name, value in fleet.nodes.items()},
                   fleet.alert_urls)


def _sync(context: ServiceContext, wanted: bool, read_key: KeyReader) -> bool:
    """Revoke nodes taken off the list; grant this node's key when `wanted`."""
    from clonefleet.unlockers import revoke_removed_nodes, sync_node_unlocker

    stale = _stale(context)
    if not wanted and not stale:
        return False
    keystore = _keystore(context)
    changed = bool(revoke_removed_nodes(context.store, keystore, context.fleet.unlockers.nodes))
    if wanted:
        key = read_key(context)
        changed = sync_node_unlocker(context.store, keystore, context.node.name,
                                     key) is not None or changed
        _publish(context)
    return changed


def before_deploy(context: ServiceContext, make_key: KeyReader | None = None) -> bool:
    """Before a deploy: a listed node not granted yet gets its identity and its grant; nodes
    taken off the list are revoked. True when the registry changed."""
    from clonefleet.unlockers import GRANTED, node_unlocker, registered

    node = context.node.name
    existing = registered(context.store).get(node_unlocker(node))
    wanted = node in context.fleet.unlockers.nodes and (existing is None
                                                        or existing.status != GRANTED)
    return _sync(context, wanted, make_key or make_identity)


def after_deploy(context: ServiceContext, outcome: DeployOutcome,
                 read_key: KeyReader | None = None) -> None:
    """After a deploy: the key on a listed node whose identity step succeeded is the one
    granted (granted or replaced if not); nodes taken off the list are revoked."""
    wanted = (context.node.name in context.fleet.unlockers.nodes
              and IDENTITY_OPERATION in outcome.succeeded)
    _sync(context, wanted, read_key or read_public_key)
