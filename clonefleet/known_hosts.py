"""One OpenSSH known_hosts file per fleet (`<state_dir>/known_hosts`): the one place from which
clonefleet's SSH clients take pinned host keys, paramiko (`clonefleet.ssh.RemoteShell`) and
pyinfra (its `ssh_known_hosts_file` host data) alike.

The state store stays the record of what was pinned (`clonefleet.nodefacts`); this file is its
projection, rewritten for a node before each pinned connection to it. So a key changed in the
store (a reinstall pins fresh keys) takes effect at once, and the state of a fleet that predates
this file (or a file with lines clonefleet wrote before entries were tagged) is brought in on
first use.

Lines are OpenSSH's: `[host]:port type base64 comment`, a bare host for port 22. Lab nodes share
127.0.0.1 on different ports and one node has two keys over its life (sshd, and Dropbear in the
initramfs on its own port), so entries are always port-qualified and their comment says which
node and role they pin (`clonefleet:<node>:<role>`). One address holds one key: pinning an
address drops whatever else was pinned there (the node's older key, or a stale entry of another
node that had the address before, e.g. a retired one whose forwarded port was reused).

Writes are read-modify-write under an exclusive `flock` on `known_hosts.lock`, then a rename:
concurrent writers (nodes provisioned in threads, a deploy runner in its own process) lose no
entry, and readers, which take no lock (paramiko, pyinfra), see the old file or the new one,
never half of one.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from clonefleet.atomic import write_atomic
from clonefleet.errors import ConfigError

FILE_NAME = "known_hosts"
TAG = "clonefleet"
SSH_PORT = 22


def public_key_blob(line: str) -> str:
    """'ssh-ed25519 AAAA... comment' -> 'ssh-ed25519 AAAA...' for comparisons."""
    parts = line.split()
    return " ".join(parts[:2])


def host_pattern(host: str, port: int) -> str:
    """How OpenSSH (and paramiko, and so pyinfra) name an address in known_hosts."""
    return host if port == SSH_PORT else f"[{host}]:{port}"


@dataclass(frozen=True)
class HostKeyEntry:
    """One pinned key: which node and role (`sshd`, `dropbear`) it belongs to, where that
    system answers, and its public key (`type base64`, no comment)."""

    node: str
    role: str
    host: str
    port: int
    key: str

    def __post_init__(self) -> None:
        for value in (self.node, self.role):
            if not value or any(character in value for character in ": \t\n"):
                raise ConfigError(f"known_hosts entry: {value!r} cannot name a node or role "
                                  "(empty, or has a colon or white space)")
        parts = self.key.split()
        if len(parts) != 2:
            raise ConfigError(f"known_hosts entry for {self.node} ({self.role}): "
                              f"{self.key!r} is not an OpenSSH public key 'type base64'")

    @property
    def pattern(self) -> str:
        return host_pattern(self.host, self.port)

    def line(self) -> str:
        return f"{self.pattern} {self.key} {TAG}:{self.node}:{self.role}"


def parse_line(line: str) -> HostKeyEntry | None:
    """A line clonefleet wrote, as an entry; None for anything else (comments, foreign or
    untagged lines, hashed host names)."""
    fields = line.split()
    if len(fields) < 4 or line.startswith("#"):
        return None
    tag, _, rest = fields[3].partition(":")
    node, _, role = rest.partition(":")
    if tag != TAG or not node or not role:
        return None
    host, port = _split_pattern(fields[0])
    if host is None:
        return None
    try:
        return HostKeyEntry(node, role, host, port, f"{fields[1]} {fields[2]}")
    except ConfigError:
        return None


def _split_pattern(pattern: str) -> tuple[str | None, int]:
    if pattern.startswith("["):
        host, separator, port = pattern[1:].partition("]:")
        if not separator or not port.isdigit():
            return None, 0
        return host, int(port)
    if "," in pattern or pattern.startswith("|"):
        return None, 0
    return pattern, SSH_PORT


def _names(line: str) -> set[str]:
    """The host patterns a line is about (an OpenSSH line may list several)."""
    fields = line.split()
    if not fields or line.startswith("#"):
        return set()
    first = fields[1] if fields[0].startswith("@") and len(fields) > 1 else fields[0]
    return set(first.split(","))


class KnownHosts:
    """The fleet's known_hosts file. Only clonefleet's tagged lines are managed; other lines
    (an operator's own) are kept, unless they name an address clonefleet pins."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")

    def __repr__(self) -> str:
        return f"KnownHosts({str(self.path)!r})"

    def entries(self) -> list[HostKeyEntry]:
        return [entry for line in self._read() if (entry := parse_line(line)) is not None]

    def keys_for(self, host: str, port: int) -> list[str]:
        pattern = host_pattern(host, port)
        return [entry.key for entry in self.entries() if entry.pattern == pattern]

    def replace_node(self, node: str, entries: Iterable[HostKeyEntry]) -> bool:
        """Make `entries` the node's only pinned keys; True when the file changed."""
        return self.replace_nodes({node: list(entries)})

    def replace_nodes(self, by_node: Mapping[str, Iterable[HostKeyEntry]]) -> bool:
        """Several nodes at once, in one locked rewrite (an empty list forgets a node)."""
        wanted = {node: list(entries) for node, entries in by_node.items()}
        for node, entries in wanted.items():
            for entry in entries:
                if entry.node != node:
                    raise ValueError(f"entry for {entry.node} given as {node}'s")
        with self._locked():
            lines = self._read()
            updated = _replace(lines, wanted)
            if updated == lines:
                return False
            self._write(updated)
            return True

    def forget_node(self, node: str) -> bool:
        return self.replace_node(node, [])

    def _read(self) -> list[str]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        return [line.strip() for line in text.splitlines() if line.strip()]

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # flock belongs to the open file description: threads of one process each open the
        # lock file themselves, so they exclude each other just as separate processes do.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write(self, lines: list[str]) -> None:
        write_atomic(self.path, "".join(f"{line}\n" for line in lines), 0o644)


def _replace(lines: list[str], wanted: Mapping[str, list[HostKeyEntry]]) -> list[str]:
    """The file's lines with the nodes in `wanted` pinned exactly as given: foreign lines
    first in their order, then clonefleet's entries sorted by node and role, so the same
    pins always give the same file."""
    new_entries: list[HostKeyEntry] = []
    pinned_patterns: set[str] = set()
    for entries in wanted.values():
        for entry in entries:
            # One address, one key: should two pins claim one address (two roles of a node
            # on one port, or two nodes' stale facts), the first given wins.
            if entry.pattern not in pinned_patterns:
                pinned_patterns.add(entry.pattern)
                new_entries.append(entry)
    foreign: list[str] = []
    ours: list[HostKeyEntry] = []
    for line in lines:
        existing = parse_line(line)
        if existing is None:
            if not _names(line) & pinned_patterns:
                foreign.append(line)
        elif existing.node not in wanted and existing.pattern not in pinned_patterns:
            ours.append(existing)
    ours += new_entries
    ours.sort(key=lambda entry: (entry.node, entry.role, entry.pattern))
    return foreign + [entry.line() for entry in ours]


def fleet_known_hosts(state_dir: Path) -> KnownHosts:
    """The fleet's known_hosts, next to its state database."""
    return KnownHosts(state_dir / FILE_NAME)
