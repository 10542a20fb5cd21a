"""Rotate a node's SSH host keys (sshd's and Dropbear's) and move their pins with them.

The pins are what every connection to a node checks (`clonefleet.nodefacts`, projected into
the fleet's known_hosts). paramiko, and so pyinfra, accepts one key per type and address, so
a node cannot be pinned to its old and new ed25519 keys at once: each pin moves at the moment
its key does, in one store transaction (then one rename of known_hosts), and a rotation stopped
at any point is finished by running it again. The new private keys are made on the node and
never leave it.

sshd: make the new key beside the old one (`KEY.new`), record it as pending, move it into
place and reload sshd (`systemctl reload ssh`: a new sshd process reads it; open sessions
stay), wait until sshd presents it, then pin it; a fresh pinned login proves the pin.

Dropbear (initramfs): make the new key beside the old one, record it as pending, move it into
place and rebuild the initramfs (`update-initramfs -u -k all`, then `sync`: a power loss
right after must not boot the old initramfs under the new pin), then pin it. Dropbear runs only
while the node waits for its passphrase, so nothing connects to it between the swap and the
pin; the next boot presents the new key.

A pending key is ours (made over a pinned login and recorded before it was put in place), so
the re-run of an interrupted rotation pins it wherever the node already presents it: sshd
reloaded before the pin moved, or the node rebooted into the new initramfs before it did.
Any other key is a mismatch, as everywhere: nothing is sent, `keys repin` after a check.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from clonefleet import nodefacts
from clonefleet.errors import HostKeyMismatchError, StateError
from clonefleet.image.node import REBUILD_INITRAMFS
from clonefleet.keyslots import now_iso
from clonefleet.known_hosts import KnownHosts, public_key_blob
from clonefleet.liveprobe import fingerprint, presented_host_key
from clonefleet.providers.base import SshAccess
from clonefleet.ssh import ConnectionFailed
from clonefleet.state import StateStore

# Fact keys.
# The roles of an unfinished rotation: {"sshd": new key line or "" (not made yet), ...}; a role
# leaves it when its pin moved.
HOST_KEY_ROTATION = "host_key_rotation"
HOST_KEYS_ROTATED_AT = "host_keys_rotated_at"  # {"sshd": ISO time, "dropbear": ISO time}

ROLES = (nodefacts.SSHD, nodefacts.DROPBEAR)
_PIN_FACT = {nodefacts.SSHD: nodefacts.SSH_HOST_KEY,
             nodefacts.DROPBEAR: nodefacts.DROPBEAR_HOST_KEY}


@dataclass(frozen=True)
class NodeKeyFiles:
    """Where a node keeps its host keys and how it takes a new one into use (a node installed
    by clonefleet; tests point these at a test server's files)."""

    sshd_key: str = "/etc/ssh/ssh_host_ed25519_key"
    dropbear_key: str = "/etc/dropbear/initramfs/dropbear_ed25519_host_key"
    reload_sshd: str = "systemctl reload ssh"
    rebuild_initramfs: str = REBUILD_INITRAMFS  # flushed before the pin moves


NODE_KEY_FILES = NodeKeyFiles()
# update-initramfs took over 15 minutes on an emulated (TCG) lab node with a two-disk layout.
REBUILD_TIMEOUT = 3600.0

class Shell(Protocol):
    def run(self, command: str, *, input_data: bytes | None = None, check: bool = True,
            timeout: float = 600, what: str = "") -> tuple[int, str, str]: ...

    def close(self) -> None: ...


def _key_line(output: str, what: str) -> str:
    for line in output.splitlines():
        if line.startswith("ssh-ed25519 "):
            return public_key_blob(line)
    raise StateError(f"{what}: no ed25519 public key in its output: {output.strip()[:200]!r}")


def new_key_command(role: str, files: NodeKeyFiles) -> str:
    """Make the role's new key beside the current one unless an interrupted run left it;
    print its public line."""
    if role == nodefacts.SSHD:
        new = shlex.quote(files.sshd_key + ".new")
        return (f"set -e; umask 077; test -s {new} || "
                f"ssh-keygen -q -t ed25519 -N '' -C '' -f {new} </dev/null >/dev/null; "
                f"ssh-keygen -y -f {new}")
    new = shlex.quote(files.dropbear_key + ".new")
    return (f"set -e; umask 077; test -s {new} || "
            f"dropbearkey -t ed25519 -f {new} >/dev/null 2>&1; dropbearkey -y -f {new}")


def swap_command(role: str, files: NodeKeyFiles, expected: str) -> str:
    """Put the new key in place (each move is one rename; a re-run after any of them goes
    on), refuse unless the key in place is `expected`, then take it into use."""
    if role == nodefacts.SSHD:
        key = shlex.quote(files.sshd_key)
        show = f"ssh-keygen -y -f {key}"
        moves = (f"if test -e {key}.new; then mv -f {key}.new {key}; fi; "
                 f"if test -e {key}.new.pub; then mv -f {key}.new.pub {key}.pub; fi; ")
        use = files.reload_sshd
    else:
        key = shlex.quote(files.dropbear_key)
        show = f"dropbearkey -y -f {key}"
        moves = f"if test -e {key}.new; then mv -f {key}.new {key}; fi; "
        use = files.rebuild_initramfs
    return (f"set -e; {moves}"
            f"test \"$({show} | grep '^ssh-ed25519 ' | cut -d' ' -f1,2)\" = "
            f"{shlex.quote(expected)} || {{ echo 'the key in place is not the new one' >&2; "
            f"exit 3; }}; {use}")


@dataclass
class RoleResult:
    role: str
    old: str = ""
    new: str = ""
    finished_interrupted: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "old": fingerprint(self.old) if self.old else None,
                "new": fingerprint(self.new) if self.new else None,
                "finished_interrupted": self.finished_interrupted}


@dataclass
class HostKeyRotation:
    node: str
    dry_run: bool = False
    roles: list[RoleResult] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    rotated_at: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "dry_run": self.dry_run,
                "keys": [role.as_dict() for role in self.roles],
                "actions": self.actions, "rotated_at": self.rotated_at or None}


def pending(store: StateStore, node: str) -> dict[str, str]:
    value = store.get_fact(node, HOST_KEY_ROTATION)
    return {str(role): str(line) for role, line in value.items()} if value else {}


def host_key_status(store: StateStore, node: str) -> dict[str, Any]:
    """For `keys status`: when the host keys were last rotated, and whether a rotation is
    unfinished."""
    rotated = store.get_fact(node, HOST_KEYS_ROTATED_AT) or {}
    return {"host_keys_rotated_at": max((str(value) for value in rotated.values()),
                                        default=None),
            "host_key_rotation_pending": sorted(pending(store, node))}


def _pin(store: StateStore, node: str, known_hosts: KnownHosts, role: str, line: str) -> str:
    """Move the role's pin to `line` and end its pending rotation, in one transaction; then
    rewrite the node's known_hosts entries. Returns the time recorded."""
    at = now_iso()
    with store.transaction():
        store.set_fact(node, _PIN_FACT[role], line)
        left = {key: value for key, value in pending(store, node).items() if key != role}
        if left:
            store.set_fact(node, HOST_KEY_ROTATION, left)
        else:
            store.delete_fact(node, HOST_KEY_ROTATION)
        rotated = dict(store.get_fact(node, HOST_KEYS_ROTATED_AT) or {})
        rotated[role] = at
        store.set_fact(node, HOST_KEYS_ROTATED_AT, rotated)
    nodefacts.load_pinned(store, node, known_hosts)
    return at


Connect = Callable[[], Shell]
Presented = Callable[[SshAccess, str], str | None]


def _presented(access: SshAccess, prefer: str) -> str | None:
    return presented_host_key(access, prefer=prefer)


def rotate_host_keys(store: StateStore, known_hosts: KnownHosts, node: str, connect: Connect,
                     *, files: NodeKeyFiles | None = None, dry_run: bool = False,
                     presented: Presented = _presented, sshd_wait: float = 30.0,
                     log: Callable[[str], None] = lambda line: None) -> HostKeyRotation:
    """Rotate both of `node`'s host keys (see the module's text); `connect()` opens a login
    to its sshd checked against the current pins. Raises `HostKeyMismatchError` when a port
    presents a key that is neither pinned nor pending, `ConnectionFailed` when sshd does not
    answer (a node waiting in its initramfs: unlock it first; a pending Dropbear key it
    already presents is pinned before that)."""
    files = files or NODE_KEY_FILES
    facts = nodefacts.load_pinned(store, node, known_hosts)
    if not facts.ssh_host_key or not facts.dropbear_host_key or facts.ssh is None:
        raise StateError(f"node {node} has no pinned host keys recorded; it was not installed "
                         "by this controller (provision it first)")
    result = HostKeyRotation(node, dry_run)
    waiting = pending(store, node)
    old = {nodefacts.SSHD: public_key_blob(facts.ssh_host_key),
           nodefacts.DROPBEAR: public_key_blob(facts.dropbear_host_key)}
    access = {nodefacts.SSHD: facts.ssh, nodefacts.DROPBEAR: facts.unlock}

    # 1. A pending key the node already presents: an earlier run stopped after the swap.
    finished: set[str] = set()
    answers: dict[str, str | None] = {}
    for role in ROLES:
        where = access[role]
        if where is None:
            answers[role] = None
            continue
        answers[role] = presented(where, "ssh-ed25519")
        if answers[role] is None:
            continue
        line = public_key_blob(str(answers[role]))
        if waiting.get(role) and line == waiting[role] and line != old[role]:
            result.actions.append(f"pin the {role} key the node already presents "
                                  f"({fingerprint(line)}): an earlier rotation swapped it")
            if not dry_run:
                _pin(store, node, known_hosts, role, line)
                log(f"{node}: {role} presents the pending key {fingerprint(line)}: pinned")
            result.roles.append(RoleResult(role, old[role], line, finished_interrupted=True))
            finished.add(role)
        elif line != old[role]:
            raise HostKeyMismatchError(
                f"{node}: {role} at {where.host}:{where.port} presents {fingerprint(line)}, "
                f"neither the pinned key ({fingerprint(old[role])}) nor a pending new one; "
                f"nothing was sent to it: check the node out of band, then "
                f"`clonefleet keys repin {node}`")
    # An unfinished rotation goes on with its roles left; a new one does both.
    todo = [role for role in ROLES if role not in finished and (role in waiting or not waiting)]
    if not todo:
        return _done(store, node, result)
    if answers[nodefacts.SSHD] is None:
        raise ConnectionFailed(f"{node}: its sshd does not answer at {facts.ssh.host}:"
                               f"{facts.ssh.port}; the node must be booted and unlocked "
                               f"(`clonefleet unlock {node}`) for its host keys to rotate")
    if dry_run:
        for role in todo:
            verb = "use the new" if waiting.get(role) else "make a new"
            take = ("reload sshd, pin it once sshd presents it" if role == nodefacts.SSHD
                    else "rebuild the initramfs, pin it (the next boot presents it)")
            result.actions.append(f"{verb} {role} key on the node, put it in place, {take}")
        return result

    if not waiting:
        with store.transaction():  # the rotation's roles, before anything is made
            store.set_fact(node, HOST_KEY_ROTATION, {role: "" for role in todo})
    shell = connect()
    try:
        for role in todo:
            result.roles.append(_rotate_role(store, known_hosts, node, shell, role, files,
                                             old[role], access[role], presented, sshd_wait,
                                             log))
            if role == nodefacts.SSHD:
                shell.close()  # the next login proves the new pin
                shell = connect()
                shell.run("true", what="a login checked against the new sshd pin")
    finally:
        shell.close()
    return _done(store, node, result)


def _done(store: StateStore, node: str, result: HostKeyRotation) -> HostKeyRotation:
    result.rotated_at = host_key_status(store, node)["host_keys_rotated_at"] or ""
    return result


def _rotate_role(store: StateStore, known_hosts: KnownHosts, node: str, shell: Shell,
                 role: str, files: NodeKeyFiles, old: str, access: SshAccess | None,
                 presented: Presented, sshd_wait: float,
                 log: Callable[[str], None]) -> RoleResult:
    new = pending(store, node).get(role)
    if not new:
        new = _key_line(shell.run(new_key_command(role, files),
                                  what=f"making a new {role} host key")[1], f"{node} {role}")
        with store.transaction():  # recorded before it is put in place
            store.set_fact(node, HOST_KEY_ROTATION, {**pending(store, node), role: new})
        log(f"{node}: new {role} host key {fingerprint(new)} made on the node")
    if role == nodefacts.DROPBEAR:
        log(f"{node}: rebuilding the initramfs with the new Dropbear key (a minute on a "
            "server, a quarter of an hour on an emulated lab node)")
    shell.run(swap_command(role, files, new), timeout=REBUILD_TIMEOUT,
              what=f"taking the new {role} host key into use")
    if role == nodefacts.SSHD and access is not None:
        deadline = time.monotonic() + sshd_wait
        while (line := presented(access, "ssh-ed25519")) is None or \
                public_key_blob(line) != new:
            if time.monotonic() > deadline:
                raise ConnectionFailed(
                    f"{node}: sshd still presents {fingerprint(line) if line else 'nothing'} "
                    f"{sshd_wait:.0f} s after its reload, not the new key {fingerprint(new)}; "
                    "run the rotation again to finish it")
            time.sleep(0.2)
    _pin(store, node, known_hosts, role, new)
    log(f"{node}: {role} host key {fingerprint(old)} → {fingerprint(new)}, pinned")
    return RoleResult(role, old, new)
