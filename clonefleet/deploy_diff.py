"""What a deploy would change in files, for `clonefleet deploy --diff`, with secrets hidden.

Runs inside the deploy runner's process (it imports pyinfra). pyinfra computes a file
operation's diff itself when its config has `DIFF` (as its CLI's `--diff`): `files.put`,
`files.template` and `files.line` compare the remote content (a `FileContents` fact) with
the desired one and hand both to `generate_color_diff`, whose colored lines go to pyinfra's
log. `DiffRecorder` stands in for that function while the deploy is prepared: it keeps the
two versions per host and operation and logs nothing, so no file's content (a secret's)
ever reaches a log, and `file_diffs` renders them as unified diffs.

Invariant: a diff is shown only when it can be shown safely. Content is hidden ("content
differs (hidden)") when the file is not readable by everyone (0600, 0640, 0440...), when it
holds any of the node's or the fleet's secrets (or a value the deploy was given lazily, such
as a drain token), or when the file could not be identified; a diff is never partial.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

HIDDEN = "content differs (hidden)"
# What pyinfra's file operations call with the current and the desired lines under DIFF.
DIFF_PRINTER = "generate_color_diff"
# Values shorter than this are not searched for (a secret is a long random string; a short
# value would hide diffs that merely contain a common word).
MIN_SECRET_LENGTH = 8


@dataclass(frozen=True)
class FileChange:
    path: str | None
    created: bool
    before: tuple[str, ...]
    after: tuple[str, ...]
    mode: int | None  # permission bits the file will have (or has), when known


@dataclass
class DiffRecorder:
    """Replaces pyinfra's diff printer while a deploy is prepared (a context manager)."""

    changes: dict[tuple[str, str], list[FileChange]] = field(default_factory=dict)
    _original: Any = None

    def __enter__(self) -> DiffRecorder:
        import pyinfra.operations.files as files_operations

        self._original = getattr(files_operations, DIFF_PRINTER)
        setattr(files_operations, DIFF_PRINTER, self._record)
        return self

    def __exit__(self, *exc_info: object) -> None:
        import pyinfra.operations.files as files_operations

        setattr(files_operations, DIFF_PRINTER, self._original)

    def _record(self, current_lines: list[str], desired_lines: list[str]) -> Iterator[str]:
        from pyinfra.context import host

        # The caller is the operation's generator (files.put / files.line): its arguments
        # say which file, and with which mode.
        local = sys._getframe(1).f_locals
        path = local.get("dest") or local.get("path")
        path = path if isinstance(path, str) else None
        mode = _octal(local.get("mode"))
        remote = local.get("remote_file")
        if mode is None and path is not None:
            if not isinstance(remote, dict):
                from pyinfra.facts.files import File

                remote = host.get_fact(File, path=path)
            if isinstance(remote, dict):
                mode = _octal(remote.get("mode"))
        key = (host.name, str(host.current_op_hash))
        self.changes.setdefault(key, []).append(FileChange(
            path=path, created=not current_lines and not remote,
            before=tuple(current_lines), after=tuple(desired_lines), mode=mode))
        return iter(())

    def for_operation(self, host_name: str, op_hash: str) -> list[FileChange]:
        return self.changes.get((host_name, op_hash), [])


def _octal(mode: object) -> int | None:
    """pyinfra's modes are octal digits as int or text (644, "0600"); True means "copy"."""
    if mode is None or isinstance(mode, bool):
        return None
    try:
        return int(str(mode), 8)
    except ValueError:
        return None


def hidden_reason(change: FileChange, secrets: Iterable[str]) -> str | None:
    """Why this file's content must not be shown, or None when it may be."""
    if change.path is None:
        return "unidentified file"
    if change.mode is not None and not change.mode & 0o004:
        return f"mode {change.mode:o}"
    text = "".join(change.before) + "".join(change.after)
    if any(len(secret) >= MIN_SECRET_LENGTH and secret in text for secret in secrets):
        return "holds a secret"
    return None


def file_diffs(changes: list[FileChange], secrets: Iterable[str]) -> list[dict[str, Any]]:
    """Each changed file as {"path", "created", "diff" (unified, or None), "hidden"}."""
    secrets = [secret for secret in secrets if secret]
    shown = []
    for change in changes:
        reason = hidden_reason(change, secrets)
        diff = None
        if reason is None:
            before = [_line(line) for line in change.before]
            after = [_line(line) for line in change.after]
            diff = "".join(difflib.unified_diff(
                before, after, fromfile="/dev/null" if change.created else str(change.path),
                tofile=str(change.path)))
        shown.append({"path": change.path, "created": change.created, "diff": diff,
                      "hidden": reason})
    return shown


def _line(line: str) -> str:
    return line if line.endswith("\n") else line + "\n"


def mask(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value replaced by ****."""
    for secret in secrets:
        if len(secret) >= MIN_SECRET_LENGTH:
            text = text.replace(secret, "****")
    return text
