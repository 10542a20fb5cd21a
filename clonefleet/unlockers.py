"""Unlockers: places other than the controller that may unlock nodes, and nothing more.

An unlocker (an `clonefleet unlockd` on another machine, e.g. on two nodes so that nodes unlock
each other while the controller is down) has one identity: an OpenSSH ed25519 key pair. Its
public key is registered by name in the fleet's state store (`keys grant NAME`); from then on
every node passphrase is age-encrypted to the controller's identity *and* to each granted key,
and the ciphertext is mirrored into the store (node fact `passphrase_age`), which is all an
unlocker reads. The same key logs the unlocker into Dropbear, whose initramfs authorized_keys
lets it run nothing but cryptroot-unlock. An unlocker holds no provider credential, no deploy
secret and no controller key: its config is its identity file and the store's address.

Grant and revoke re-encrypt every entry at once, each as a new file renamed over the old one
(and its store mirror rewritten), so an interrupted run leaves every entry whole. The registry
says where a run stopped: a revoke marks the unlocker `revoking` before it starts, entries are
re-encrypted without it, and only then is it forgotten; a revoke that cannot finish says which
entries are still readable by the unlocker and is finished by running it again.

What revoke cannot do: a revoked unlocker that kept copies of the old ciphertexts can still
open them with its key. Revocation protects passphrases written after it; rotate the LUKS
passphrases (`clonefleet keys rotate`) to take the old ones away too.

Unlockers on fleet nodes (`[unlock] unlockers`, `deploys/unlocker.py`) are registered as
`node:<NAME>` by `clonefleet deploy` (`sync_node_unlocker`), and revoked by the first deploy
after their node left the list (`revoke_removed_nodes`).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyrage

from clonefleet.errors import ConfigError, KeystoreError
from clonefleet.keystore import Keystore
from clonefleet.known_hosts import public_key_blob
from clonefleet.state import FLEET_FACTS, StateStore

REGISTRY = "unlockers"  # fleet fact: {name: {"key", "status", "at"}}
# Fleet fact, set by the first grant and never unset: from then on the base deploy manages
# Dropbear's initramfs authorized_keys (so a revoke of the last unlocker reaches the nodes
# too); a fleet that never granted one leaves the file as the install wrote it.
MANAGED = "unlock_keys_managed"
ESCROW = "passphrase_age"  # node fact: base64 of the age ciphertext
GRANTING, GRANTED, REVOKING = "granting", "granted", "revoking"
KEY_TYPES = ("ssh-ed25519",)
# Unlockers on fleet nodes are registered under this prefix and the node's name; the deploy
# manages them (grants a node's key, revokes it once the node is no longer an unlocker).
NODE_PREFIX = "node:"


@dataclass(frozen=True)
class Unlocker:
    name: str
    key: str  # "ssh-ed25519 AAAA..."
    status: str
    at: float

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "status": self.status, "at": self.at}


def registered(store: StateStore) -> dict[str, Unlocker]:
    raw = store.get_fact(FLEET_FACTS, REGISTRY, {})
    result = {}
    for name, value in (raw.items() if isinstance(raw, dict) else ()):
        if isinstance(value, dict) and isinstance(value.get("key"), str):
            result[name] = Unlocker(name, value["key"], str(value.get("status", GRANTED)),
                                    float(value.get("at", 0)))
    return result


def recipient_keys(store: StateStore) -> list[str]:
    """The keys every entry is encrypted to, besides the controller's: granted unlockers and
    those being granted (never one being revoked)."""
    return [unlocker.key for _, unlocker in sorted(registered(store).items())
            if unlocker.status != REVOKING]


def _set(store: StateStore, name: str, unlocker: Unlocker | None) -> None:
    with store.transaction():
        raw = store.get_fact(FLEET_FACTS, REGISTRY, {})
        raw = dict(raw) if isinstance(raw, dict) else {}
        if unlocker is None:
            raw.pop(name, None)
        else:
            raw[name] = {"key": unlocker.key, "status": unlocker.status, "at": unlocker.at}
        store.set_fact(FLEET_FACTS, REGISTRY, raw)


def mirror_to(store: StateStore) -> Any:
    def mirror(node: str, ciphertext: bytes | None) -> None:
        if ciphertext is None:
            store.delete_fact(node, ESCROW)
        else:
            store.set_fact(node, ESCROW, base64.b64encode(ciphertext).decode())

    return mirror


def initramfs_keys(store: StateStore, operator_key: str) -> list[str]:
    """The keys the base deploy writes into Dropbear's initramfs authorized_keys: the
    operator's, then every granted unlocker's; [] (leave the file alone) in a fleet that never
    granted an unlocker."""
    unlockers = recipient_keys(store)
    if not unlockers and not store.get_fact(FLEET_FACTS, MANAGED):
        return []
    return [operator_key, *unlockers]


def fleet_keystore(state_dir: Path, store: StateStore,
                   identity_path: Path | None = None) -> Keystore:
    """The controller's keystore, encrypting to the granted unlockers and mirroring into the
    store: what provisioning and `keys grant|revoke` use."""
    return Keystore(state_dir / "keystore", identity_path,
                    unlockers=lambda: recipient_keys(store), mirror=mirror_to(store))


def parse_public_key(text: str, name: str) -> str:
    """An unlocker's public key line → "ssh-ed25519 AAAA..."; `ConfigError` otherwise."""
    blob = public_key_blob(text.strip())
    if blob.split(" ")[0] not in KEY_TYPES or len(blob.split(" ")) != 2:
        raise ConfigError(f"unlocker {name!r}: {text.strip()[:40]!r} is not an ssh-ed25519 "
                          "public key; pass the .pub line of the unlocker's identity "
                          "(`clonefleet keys unlocker-key FILE` makes one)")
    try:
        pyrage.ssh.Recipient.from_str(blob)
    except (ValueError, pyrage.RecipientError):
        raise ConfigError(f"unlocker {name!r}: the key {blob[:40]!r}... does not parse; pass "
                          "the whole .pub line") from None
    return blob


@dataclass(frozen=True)
class ReencryptReport:
    unlocker: str
    action: str  # "grant" | "revoke"
    nodes: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"unlocker": self.unlocker, "action": self.action, "nodes": list(self.nodes)}


def _reencrypt_all(keystore: Keystore, keys: Sequence[str], name: str,
                   action: str) -> tuple[str, ...]:
    done: list[str] = []
    nodes = keystore.nodes()
    for node in nodes:
        try:
            keystore.reencrypt(node, keys)
        except (KeystoreError, OSError) as error:
            left = [other for other in nodes if other not in done]
            raise KeystoreError(
                f"{action} of unlocker {name!r} unfinished: {len(done)} of {len(nodes)} "
                f"entries re-encrypted; {', '.join(left)} not yet ({error}); fix that and run "
                f"`clonefleet keys {action} {name}` again") from None
        done.append(node)
    return tuple(done)


def grant(store: StateStore, keystore: Keystore, name: str, public_key: str) -> ReencryptReport:
    """Register `name` with `public_key` and re-encrypt every entry to it too."""
    key = parse_public_key(public_key, name)
    existing = registered(store).get(name)
    if existing is not None and existing.key != key and existing.status != REVOKING:
        raise ConfigError(f"unlocker {name!r} is registered with another key; revoke it first "
                          f"(`clonefleet keys revoke {name}`) or grant under another name")
    keystore.identity(create=False)  # fail before anything changes when it is missing
    store.set_fact(FLEET_FACTS, MANAGED, True)
    _set(store, name, Unlocker(name, key, GRANTING, time.time()))
    nodes = _reencrypt_all(keystore, recipient_keys(store), name, "grant")
    _set(store, name, Unlocker(name, key, GRANTED, time.time()))
    return ReencryptReport(name, "grant", nodes)


def revoke(store: StateStore, keystore: Keystore, name: str) -> ReencryptReport:
    """Re-encrypt every entry without `name`'s key, then forget it."""
    existing = registered(store).get(name)
    if existing is None:
        known = ", ".join(sorted(registered(store))) or "none"
        raise ConfigError(f"no unlocker named {name!r} is granted (granted: {known})")
    keystore.identity(create=False)
    _set(store, name, Unlocker(name, existing.key, REVOKING, time.time()))
    nodes = _reencrypt_all(keystore, recipient_keys(store), name, "revoke")
    _set(store, name, None)
    return ReencryptReport(name, "revoke", nodes)


def node_unlocker(node: str) -> str:
    """The registry name of the unlocker on `node`."""
    return f"{NODE_PREFIX}{node}"


def sync_node_unlocker(store: StateStore, keystore: Keystore, node: str,
                       public_key: str) -> ReencryptReport | None:
    """Grant the key made on `node` as `node:<NAME>`; None (nothing re-encrypted) when it is
    granted with that key already. A node that made a new key (reinstalled) has its old one
    revoked first, so a key the node no longer holds opens nothing written from now on."""
    name = node_unlocker(node)
    key = parse_public_key(public_key, name)
    existing = registered(store).get(name)
    if existing is not None and existing.key == key and existing.status == GRANTED:
        return None
    if existing is not None and existing.key != key:
        revoke(store, keystore, name)
    return grant(store, keystore, name, key)


def revoke_removed_nodes(store: StateStore, keystore: Keystore,
                         unlocker_nodes: Sequence[str]) -> list[ReencryptReport]:
    """Revoke every `node:<NAME>` unlocker whose node is not in `unlocker_nodes` (taken off
    `[unlock] unlockers`, or out of the fleet)."""
    return [revoke(store, keystore, name) for name in sorted(registered(store))
            if name.startswith(NODE_PREFIX) and name[len(NODE_PREFIX):] not in unlocker_nodes]


class UnlockerPassphrases:
    """What an unlocker reads: the store's mirror of a node's entry, opened with its own
    identity (an OpenSSH ed25519 private key file, also its Dropbear login)."""

    def __init__(self, store: StateStore, identity_path: Path) -> None:
        self.store = store
        self.identity_path = identity_path
        try:
            self.identity = pyrage.ssh.Identity.from_buffer(identity_path.read_bytes())
        except FileNotFoundError:
            raise KeystoreError(f"unlocker identity {identity_path} is missing; pass "
                                "--identity with the unlocker's private key file") from None
        except (ValueError, pyrage.IdentityError) as error:
            raise KeystoreError(f"unlocker identity {identity_path} is not an unencrypted "
                                f"OpenSSH ed25519 private key ({error})") from None

    def get(self, node: str) -> str:
        value = self.store.get_fact(node, ESCROW)
        if not isinstance(value, str):
            raise KeystoreError(f"no escrowed passphrase for {node} in the state store; grant "
                                "this unlocker on the controller (`clonefleet keys grant NAME`)")
        try:
            return bytes(pyrage.decrypt(base64.b64decode(value), [self.identity])).decode()
        except (pyrage.DecryptError, ValueError):
            raise KeystoreError(f"unlocker identity {self.identity_path} cannot decrypt {node}'s "
                                "passphrase: not granted, or revoked (`clonefleet keys grant "
                                "NAME` on the controller)") from None
