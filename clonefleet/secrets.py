"""Deploy secrets (TLS keys, WireGuard keys, database passwords, PowerDNS API keys), age-encrypted.

Each secret belongs to a scope, a node's name or `FLEET` for the whole fleet, and is stored as
`<state>/secrets/<scope>/<name>.age`, encrypted to the keystore's identity (the same key that
opens the LUKS passphrases, kept outside the state folder). Secrets are generated on first use,
held only in memory once decrypted, handed to pyinfra as host data for the deploy that needs
them, and never printed: `Secret` hides its value from `repr` and `str`.

    secrets = open_secrets(state_dir)
    api_key = secrets.get_or_create("fsn-1", "pdns_api_key", random_token)
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets as random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyrage

from clonefleet.errors import KeystoreError
from clonefleet.keystore import Keystore

FLEET = "@fleet"
NAME = re.compile(r"^[A-Za-z0-9@][A-Za-z0-9_.@-]{0,127}$")


@dataclass(frozen=True)
class Secret:
    """A secret value that does not show itself by accident (logs, tracebacks, repr)."""

    value: str

    def __repr__(self) -> str:
        return "Secret(****)"

    __str__ = __repr__


def random_token() -> str:
    """A 43-character URL-safe random string (256 bits)."""
    return random.token_urlsafe(32)


class SecretStore:
    """Secrets per scope (node name or `FLEET`), encrypted with the keystore's age identity."""

    def __init__(self, directory: Path, keystore: Keystore) -> None:
        self.directory = directory
        self.keystore = keystore

    def _path(self, scope: str, name: str) -> Path:
        for part in (scope, name):
            if not NAME.match(part):
                raise KeystoreError(f"secret scope or name {part!r} is not a plain name "
                                    "(letters, digits, '_', '.', '-', '@')")
        return self.directory / scope / f"{name}.age"

    def has(self, scope: str, name: str) -> bool:
        return self._path(scope, name).exists()

    def names(self, scope: str) -> list[str]:
        """The names of the secrets stored for `scope` (none for an unknown scope)."""
        folder = self.directory / scope
        if not NAME.match(scope) or not folder.is_dir():
            return []
        return sorted(path.name.removesuffix(".age") for path in folder.glob("*.age"))

    def get(self, scope: str, name: str) -> str:
        path = self._path(scope, name)
        if not path.exists():
            raise KeystoreError(f"no secret {name!r} stored for {scope!r} in {self.directory}; "
                                "deploy the node from this controller to create it")
        identity = self.keystore.identity(create=False)
        try:
            return bytes(pyrage.decrypt(path.read_bytes(), [identity])).decode()
        except pyrage.DecryptError:
            raise KeystoreError(
                f"cannot decrypt {path} with {self.keystore.identity_path}: wrong keystore "
                "key; restore the key this fleet was set up with") from None

    def _write(self, scope: str, name: str, value: str, *, replace: bool) -> None:
        path = self._path(scope, name)
        identity = self.keystore.identity(create=True)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        encrypted = pyrage.encrypt(value.encode(), [identity.to_public()])
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(encrypted)
            if replace:
                temporary.replace(path)
            else:
                # link() fails if the name exists: of two writers, exactly one creates it.
                with contextlib.suppress(FileExistsError):
                    os.link(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    def put(self, scope: str, name: str, value: str) -> None:
        """Store `value` (replacing any), atomically: a crash leaves the old or the new."""
        self._write(scope, name, value, replace=True)

    def get_or_create(self, scope: str, name: str, generate: Callable[[], str]) -> str:
        """The stored secret, or a new one from `generate()` stored first.

        Creation is exclusive: when two processes create the same secret at once, one value
        is stored and both return it.
        """
        if not self.has(scope, name):
            self._write(scope, name, generate(), replace=False)
        return self.get(scope, name)

    def delete_scope(self, scope: str) -> None:
        """Forget every secret of a node (when it is retired)."""
        folder = self.directory / scope
        if not NAME.match(scope) or not folder.is_dir():
            return
        for path in folder.glob("*.age"):
            path.unlink()
        folder.rmdir()


def open_secrets(state_dir: Path, keystore: Keystore | None = None) -> SecretStore:
    """The fleet's secret store, next to its keystore and under the same identity."""
    return SecretStore(state_dir / "secrets", keystore or Keystore(state_dir / "keystore"))
