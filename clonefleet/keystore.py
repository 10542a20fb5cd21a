"""Per-node LUKS passphrases, encrypted at rest with age (pyrage).

The identity (private key) lives outside the fleet state folder by default
(`~/.config/clonefleet/age.key`, or `CLONEFLEET_AGE_KEY`), so a copy of the state folder
alone does not reveal any passphrase. Passphrases never touch the node's disk and are never
printed.

Each entry is encrypted to the controller's identity and to every granted unlocker's SSH key
(age multi-recipient; `clonefleet.unlockers` keeps the list and mirrors each entry into the
state store for unlockers elsewhere). Every write is a new file renamed over the old one, so
an interrupted re-encryption leaves each entry whole: old recipients or new.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

import pyrage

from clonefleet.atomic import write_atomic
from clonefleet.errors import KeystoreError


def default_identity_path() -> Path:
    env = os.environ.get("CLONEFLEET_AGE_KEY")
    return Path(env) if env else Path.home() / ".config" / "clonefleet" / "age.key"


class Keystore:
    """Given a folder and an age identity file, keep one encrypted passphrase per node."""

    def __init__(self, directory: Path, identity_path: Path | None = None, *,
                 unlockers: Callable[[], Sequence[str]] | None = None,
                 mirror: Callable[[str, bytes | None], None] | None = None) -> None:
        """`unlockers()`: the SSH public keys ("ssh-ed25519 AAAA...") of the granted unlockers,
        each entry's extra recipients; `mirror(node, ciphertext)`: called after each write
        (None after a delete), to copy the entry where unlockers read it."""
        self.directory = directory
        self.identity_path = identity_path or default_identity_path()
        self.unlockers = unlockers
        self.mirror = mirror

    def identity(self, *, create: bool) -> pyrage.x25519.Identity:
        if not self.identity_path.exists():
            if not create:
                raise KeystoreError(
                    f"keystore key {self.identity_path} is missing, so the node passphrases in "
                    f"{self.directory} cannot be opened; restore the key file (or set "
                    "CLONEFLEET_AGE_KEY to its path)")
            self.identity_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            identity = pyrage.x25519.Identity.generate()
            descriptor = os.open(self.identity_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(f"# clonefleet keystore identity\n{identity}\n")
            return identity
        lines = [line.strip() for line in self.identity_path.read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
        try:
            return pyrage.x25519.Identity.from_str(lines[0])
        except (IndexError, ValueError, pyrage.IdentityError) as error:
            raise KeystoreError(f"keystore key {self.identity_path} is not an age identity "
                                f"({error}); restore the right file") from None

    def ensure_identity(self) -> None:
        """Create the identity now if it is missing: nodes installed at once would otherwise
        race to create it on their first passphrase, and all but one would fail."""
        self.identity(create=True)

    def _path(self, node: str) -> Path:
        return self.directory / f"{node}.age"

    def has(self, node: str) -> bool:
        return self._path(node).exists()

    def create(self, node: str) -> str:
        """Return the node's passphrase, generating and storing a new one if none exists."""
        if self.has(node):
            return self.get(node)
        identity = self.identity(create=True)
        passphrase = secrets.token_urlsafe(32)
        self._write(node, passphrase, identity)
        return passphrase

    def recipients(self, identity: pyrage.x25519.Identity,
                   unlocker_keys: Sequence[str] | None = None) -> list[object]:
        """The controller's identity and every granted unlocker's key."""
        keys = list(self.unlockers() if self.unlockers else ()) if unlocker_keys is None \
            else list(unlocker_keys)
        result: list[object] = [identity.to_public()]
        for key in keys:
            try:
                result.append(pyrage.ssh.Recipient.from_str(" ".join(key.split()[:2])))
            except (ValueError, pyrage.RecipientError) as error:
                raise KeystoreError(f"unlocker key {key[:40]!r}... is not an SSH ed25519 or "
                                    f"RSA public key ({error}); grant it again with its "
                                    "public key line") from None
        return result

    def _write(self, node: str, passphrase: str, identity: pyrage.x25519.Identity,
               unlocker_keys: Sequence[str] | None = None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        encrypted = pyrage.encrypt(passphrase.encode(), self.recipients(identity, unlocker_keys))
        write_atomic(self._path(node), encrypted, 0o600)
        if self.mirror is not None:
            self.mirror(node, encrypted)

    def nodes(self) -> list[str]:
        """Every node with a stored passphrase."""
        if not self.directory.is_dir():
            return []
        return sorted(path.stem for path in self.directory.glob("*.age"))

    def reencrypt(self, node: str, unlocker_keys: Sequence[str] | None = None) -> None:
        """Write the node's entry anew for the current recipients (or `unlocker_keys`)."""
        passphrase = self.get(node)
        self._write(node, passphrase, self.identity(create=False), unlocker_keys)

    def get(self, node: str) -> str:
        path = self._path(node)
        if not path.exists():
            raise KeystoreError(f"no passphrase stored for node {node!r} in {self.directory}; "
                                "was it provisioned from this controller?")
        identity = self.identity(create=False)
        try:
            return bytes(pyrage.decrypt(path.read_bytes(), [identity])).decode()
        except pyrage.DecryptError:
            raise KeystoreError(
                f"cannot decrypt {path} with {self.identity_path}: wrong keystore key; "
                "restore the key this fleet was set up with") from None

    def delete(self, node: str) -> None:
        self._path(node).unlink(missing_ok=True)
        if self.mirror is not None:
            self.mirror(node, None)

    def replace(self, node: str, passphrase: str) -> None:
        """Store `passphrase` as the node's entry in place of the one there (key rotation),
        for the same recipients (the controller and every granted unlocker): written to a new
        file, flushed, then renamed over the old one, so a reader (or a crash) sees the old
        entry or the new one, whole."""
        if not self.has(node):
            raise KeystoreError(f"no passphrase stored for node {node!r} in {self.directory} "
                                "to replace")
        self._write(node, passphrase, self.identity(create=False))
