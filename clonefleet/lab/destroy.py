"""`clonefleet lab destroy`: delete lab VMs and forget what their install left behind."""

from __future__ import annotations

from pathlib import Path

from clonefleet.keystore import Keystore
from clonefleet.known_hosts import fleet_known_hosts
from clonefleet.providers.lab import LabProvider
from clonefleet.state import StateStore, lifecycle

ACTOR = "clonefleet lab destroy"


def destroy_lab_vms(store: StateStore, state_dir: Path, names: list[str] | None) -> list[str]:
    """Delete the named lab VMs (every one of the fleet when `names` is None), disks included,
    then their facts, passphrases and pinned host keys; a recorded node goes back to
    `ordered`. Returns the names destroyed."""
    provider = LabProvider(state_dir)
    if names is None:
        names = [server.node for server in provider.list()]
    keystore = Keystore(state_dir / "keystore")
    known_hosts = fleet_known_hosts(state_dir)
    for name in names:
        provider.delete(name)
        store.delete_facts(name)
        keystore.delete(name)
        # The next install pins fresh keys; until then nothing may trust the old ones.
        known_hosts.forget_node(name)
        record = store.get(name)
        if record is not None and lifecycle.DESTROY_LAB.allows(record.state):
            store.apply(name, lifecycle.DESTROY_LAB, actor=ACTOR, reason="lab VM destroyed")
    return names
