"""Retire a node for good: delete its server, then forget its passphrase and facts.

The order is the invariant: nothing is forgotten before the provider confirmed the server is
gone. A provider that cannot delete (Hetzner Robot and OVH servers are cancelled in the
provider's console) raises `ProviderError`, and the node keeps its passphrase, facts and
state, so it can still be unlocked. A node still in DNS answers is drained first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from clonefleet import nodefacts
from clonefleet.errors import StateError
from clonefleet.inventory import Fleet
from clonefleet.keystore import Keystore
from clonefleet.known_hosts import KnownHosts
from clonefleet.providers.base import Provider
from clonefleet.state import StateStore, lifecycle

ACTOR = "clonefleet retire"
# A node that serves (or is leaving) DNS answers must be drained before it disappears.
RETIRE_FROM = lifecycle.RETIRE.from_states
STEPS = ("delete server", "forget passphrase", "forget facts", "record retired")


@dataclass
class RetireResult:
    node: str
    provider: str
    server_id: str
    state: str | None  # before
    steps: list[str] = field(default_factory=list)
    done: bool = False  # False: a plan (--dry-run) or nothing to do
    note: str = ""


def plan_retire(fleet: Fleet, store: StateStore, node_name: str) -> RetireResult:
    """What `retire` would do now, touching nothing; refuses what `retire` would refuse."""
    node = fleet.node(node_name)
    record = store.get(node.name)
    state = record.state if record else None
    # This one fact only: a node whose other facts are damaged can still be retired.
    server_id = store.get_fact(node.name, nodefacts.SERVER_ID, "") or node.server_id
    result = RetireResult(node=node.name, provider=node.provider, server_id=str(server_id),
                          state=state)
    if state == "retired":
        result.note = "already retired"
        return result
    if state not in RETIRE_FROM:
        raise StateError(f"node {node.name} is {state}: it is in DNS answers; drain it first "
                         f"(clonefleet drain {node.name}), then retire it")
    result.steps = list(STEPS)
    return result


def retire(fleet: Fleet, store: StateStore, provider: Provider, keystore: Keystore,
           node_name: str, *, actor: str = ACTOR, known_hosts: KnownHosts | None = None,
           log: Callable[[str], None] = print) -> RetireResult:
    """Delete the node's server, then forget its passphrase, facts and pinned host keys (in
    `known_hosts`, the fleet's file), and record it retired."""
    result = plan_retire(fleet, store, node_name)
    if not result.steps:
        return result
    node = fleet.node(node_name)
    log(f"{node.name}: delete {node.provider} server {result.server_id or '(none recorded)'}")
    provider.delete(node)  # raises (Robot, OVH): nothing below happens
    server = f" {result.server_id}" if result.server_id else ""
    with store.transaction():
        store.delete_facts(node.name)
        store.apply(node.name, lifecycle.RETIRE, actor=actor,
                    reason=f"{node.provider} server{server} deleted")
    keystore.delete(node.name)
    if known_hosts is not None:
        # A later server on the same address must not meet this node's old pins.
        known_hosts.forget_node(node.name)
    log(f"{node.name}: retired; its passphrase, facts and host keys are forgotten")
    result.done = True
    return result
