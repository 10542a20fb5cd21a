"""Two file operations pyinfra lacks: a secret file and a file checked before it goes live.

- `secret_file`: pyinfra's `files.put`/`files.template` print the old and new contents with
  `--diff`; a private key must never be shown, so this one compares checksums only and says
  "content hidden". pyinfra has no per-operation switch for that (`MaskString` hides only
  command arguments).
- `checked_file`: a configuration file is uploaded next to the live one, checked by the
  service's own checker (e.g. `haproxy -c -f`), and moved over the live file only if the
  check passes, so a bad configuration never replaces a working one. It compares against
  the live file, so after a failed check the next run tries (and fails) again instead of
  reporting nothing to do.

Both report no change when the file on the node already has the content and mode.
"""

from __future__ import annotations

import hashlib
from io import StringIO

from pyinfra import host, logger, state
from pyinfra.api import FileUploadCommand, QuoteString, StringCommand, operation
from pyinfra.facts.files import File, Sha256File


def _sha256(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def _metadata_commands(dest: str, mode: str, user: str, group: str):  # type: ignore[no-untyped-def]
    yield StringCommand("chown", f"{user}:{group}", QuoteString(dest))
    yield StringCommand("chmod", mode, QuoteString(dest))


def _metadata_ok(dest: str, mode: str, user: str, group: str) -> bool:
    remote = host.get_fact(File, path=dest)
    return bool(remote) and remote["mode"] == int(mode) and remote["user"] == user \
        and remote["group"] == group


@operation()
def secret_file(content: str, dest: str, mode: str = "600", user: str = "root",
                group: str = "root"):  # type: ignore[no-untyped-def]
    """
    Write a file whose content must never be shown (a private key).

    + content: the file's text
    + dest: the file on the node
    + mode, user, group: its permissions and owner
    """
    if host.get_fact(Sha256File, path=dest) == _sha256(content):
        if _metadata_ok(dest, mode, user, group):
            host.noop(f"{dest} is up to date (content hidden)")
            return
        yield from _metadata_commands(dest, mode, user, group)
        return
    if state.config.DIFF:
        host.log(f"Will write {dest} (content hidden)", logger.info)
    # Written with the mode first: create the file empty and private, then fill it.
    yield StringCommand("install", "-m", mode, "-o", user, "-g", group, "/dev/null",
                        QuoteString(dest))
    yield FileUploadCommand(StringIO(content), dest)
    yield from _metadata_commands(dest, mode, user, group)


@operation()
def checked_file(content: str, dest: str, check: str, mode: str = "644", user: str = "root",
                 group: str = "root"):  # type: ignore[no-untyped-def]
    """
    Replace a configuration file only with content its service accepts.

    + content: the file's text
    + dest: the live file on the node
    + check: a shell command checking the candidate; ``{path}`` is replaced by its path
    + mode, user, group: its permissions and owner
    """
    if host.get_fact(Sha256File, path=dest) == _sha256(content):
        if _metadata_ok(dest, mode, user, group):
            host.noop(f"{dest} is up to date")
            return
        yield from _metadata_commands(dest, mode, user, group)
        return
    candidate = f"{dest}.candidate"
    yield FileUploadCommand(StringIO(content), candidate)
    yield from _metadata_commands(candidate, mode, user, group)
    # On failure the candidate is removed and the operation fails with the checker's output.
    yield StringCommand(check.format(path=candidate), "||", "{", "rm", "-f",
                        QuoteString(candidate), ";", "exit", "1", ";", "}")
    yield StringCommand("mv", "-f", QuoteString(candidate), QuoteString(dest))
