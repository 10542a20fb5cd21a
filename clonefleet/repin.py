"""`clonefleet keys repin NODE`: after a host-key mismatch, pin the keys a node presents now.

Re-pinning is deliberate: `plan_repin` fetches the keys the node's sshd and Dropbear present
(key exchange only, nothing else is sent) and sets them next to the pinned ones; the caller
shows both and asks, and only `apply_repin` changes anything, pinning exactly the keys that
were shown (a key that changed again in between is not pinned unseen). Pins change in one
store transaction, then the fleet's known_hosts is rewritten from the store in one rename.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clonefleet.errors import StateError
from clonefleet.known_hosts import KnownHosts, public_key_blob
from clonefleet.liveprobe import DEFAULT_TIMEOUT, fingerprint, presented_host_key
from clonefleet.nodefacts import DROPBEAR, SSHD, load_pinned, replace_host_keys
from clonefleet.ssh import ConnectionFailed
from clonefleet.state import StateStore


@dataclass(frozen=True)
class KeyChange:
    role: str  # "sshd" | "dropbear"
    host: str
    port: int
    pinned: str  # the pinned public key ("type base64"), "" if none
    presented: str  # what answers there now, "" if nothing answered

    @property
    def changed(self) -> bool:
        """A pinned key replaced by another; a role never pinned is not re-pinned (its keys
        are pinned at install, never taken from whoever answers)."""
        return bool(self.pinned) and bool(self.presented) and self.presented != self.pinned

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "host": self.host, "port": self.port,
                "pinned": fingerprint(self.pinned) if self.pinned else "",
                "presented": fingerprint(self.presented) if self.presented else "",
                "changed": self.changed}


@dataclass(frozen=True)
class RepinPlan:
    node: str
    keys: tuple[KeyChange, ...]

    @property
    def changes(self) -> tuple[KeyChange, ...]:
        return tuple(key for key in self.keys if key.changed)

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "keys": [key.as_dict() for key in self.keys],
                "changes": len(self.changes)}


def plan_repin(store: StateStore, node: str, known_hosts: KnownHosts,
               timeout: float = DEFAULT_TIMEOUT) -> RepinPlan:
    """The node's pinned keys next to those its SSH servers present now. Fails when neither
    answers (nothing to re-pin to)."""
    facts = load_pinned(store, node, known_hosts)
    keys = []
    for role, access, line in ((SSHD, facts.ssh, facts.ssh_host_key),
                               (DROPBEAR, facts.unlock, facts.dropbear_host_key)):
        if access is None:
            continue
        pinned = public_key_blob(line) if line else ""
        presented = presented_host_key(access, timeout, prefer=pinned.split()[0]
                                       if pinned else "")
        keys.append(KeyChange(role, access.host, access.port, pinned, presented or ""))
    if not keys:
        raise StateError(f"{node}: no SSH address recorded; provision it first")
    if not any(key.pinned for key in keys):
        raise StateError(f"{node}: no host key is pinned yet (keys are pinned when it is "
                         f"installed): `clonefleet provision {node}`, not keys repin")
    if not any(key.presented for key in keys):
        where = ", ".join(f"{key.role} at {key.host}:{key.port}" for key in keys)
        raise ConnectionFailed(f"{node}: neither SSH server answers ({where}); power it "
                                    f"on (`clonefleet power on {node}`) and try again")
    return RepinPlan(node, tuple(keys))


def apply_repin(store: StateStore, known_hosts: KnownHosts, plan: RepinPlan) -> None:
    """Pin the presented keys of `plan` that differ from the pinned ones."""
    changes = {key.role: key.presented for key in plan.changes}
    if changes:
        replace_host_keys(store, plan.node, known_hosts, changes)
