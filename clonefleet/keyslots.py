"""A node's LUKS key slots: the escrowed passphrase, the offline recovery key, rotation.

Every node's root volume has two key slots: the unlock passphrase the keystore escrows (what
`clonefleet unlock` sends) and a recovery key that exists only on paper, shown once when the
node is installed (or when `keys recovery --new` replaces it). The facts record which slot
holds which (`luks_slots`) and when the escrowed passphrase was last set (`luks_rotated_at`).

Secrets never reach a command line or the controller's disk in clear: they travel on the SSH
session's stdin, and cryptsetup reads them from files in a fresh folder on the node's tmpfs
(`/dev/shm`, mode 700/600), removed when the command ends however it ends. The commands are
built here once and used by the installer (in the rescue system), by rotation and by the
tests alike.

Rotation keeps one invariant at every instant: the passphrase in the keystore opens a slot.
It adds the new passphrase to a free slot (recorded in `luks_rotation` first), proves the new
slot opens the volume, replaces the keystore entry (one rename), and only then kills the old
slot. A run that stopped anywhere is finished by the next one: if the keystore already holds
the new passphrase the old slot is killed; if not, the half-added slot (whose passphrase died
with the process) is killed and the rotation starts over.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from clonefleet.errors import KeystoreError, StateError
from clonefleet.state import StateStore

# Fact keys.
LUKS_SLOTS = "luks_slots"  # {"escrow": 0, "recovery": 1}
LUKS_ROTATED_AT = "luks_rotated_at"  # ISO time the escrowed passphrase was last set
LUKS_ROTATION = "luks_rotation"  # {"from": 0, "to": 2, "started_at": ...} while rotating
LUKS_RECOVERY_CHANGE = "luks_recovery_change"  # {"from": 1, "to": 2} while replacing it

ESCROW = "escrow"
RECOVERY = "recovery"
INSTALL_SLOTS = {ESCROW: 0, RECOVERY: 1}  # luksFormat takes slot 0; the installer adds 1
LUKS2_SLOTS = 32

# Crockford's base32 without I, L, O, U: nothing a person can misread or mistype.
RECOVERY_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
RECOVERY_GROUPS = 8
RECOVERY_GROUP_LENGTH = 5  # 8 × 5 characters × 5 bits = 200 bits

SECRETS_FOLDER = "/dev/shm"  # tmpfs on rescue systems and installed nodes alike


class KeySlotError(KeystoreError):
    """A key slot operation that cannot go on (nothing was changed that loses a key)."""


class Shell(Protocol):
    def run(self, command: str, *, input_data: bytes | None = None, check: bool = True,
            timeout: float = 600, what: str = "") -> tuple[int, str, str]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Pbkdf:
    """The key derivation for a new slot: argon2id with this much memory; `iterations`
    fixed (tests) or, when None, benchmarked by cryptsetup as luksFormat does, for
    cryptsetup's default unlock time or `iter_time_ms` (tests)."""

    memory_kib: int
    iterations: int | None = None
    iter_time_ms: int | None = None

    def arguments(self) -> str:
        text = f"--pbkdf argon2id --pbkdf-memory {int(self.memory_kib)}"
        if self.iterations is not None:
            text += f" --pbkdf-force-iterations {int(self.iterations)}"
        elif self.iter_time_ms is not None:
            text += f" --iter-time {int(self.iter_time_ms)}"
        return text


def new_recovery_key() -> str:
    """A recovery key as a person types it: 8 groups of 5 characters, 200 bits."""
    characters = "".join(secrets.choice(RECOVERY_ALPHABET)
                         for _ in range(RECOVERY_GROUPS * RECOVERY_GROUP_LENGTH))
    return "-".join(characters[index:index + RECOVERY_GROUP_LENGTH]
                    for index in range(0, len(characters), RECOVERY_GROUP_LENGTH))


def new_passphrase() -> str:
    """A new escrowed passphrase, of the kind the keystore creates."""
    return secrets.token_urlsafe(32)


# ---- the commands (shared by the installer, rotation and tests) ----

def _secrets_input(*values: str) -> bytes:
    for value in values:
        if not value or "\n" in value or "\0" in value:
            raise ValueError("a LUKS secret must be a non-empty single line")
    return "".join(f"{value}\n" for value in values).encode()


def _with_secret_files(names: tuple[str, ...], body: str) -> str:
    """A shell script that reads one line per name from stdin into files in a fresh private
    folder on tmpfs (the shell's `read` and `printf` are builtins: no secret in any argv),
    runs `body` with `$d/<name>` available, and removes the folder on any exit."""
    reads = "".join(f'IFS= read -r {name}; printf %s "${name}" > "$d/{name}"; '
                    for name in names)
    return (f'set -e; umask 077; '
            f'[ "$(stat -f -c %T {SECRETS_FOLDER})" = tmpfs ] || '
            f'{{ echo "{SECRETS_FOLDER} is not a tmpfs: no secret is written there" >&2; '
            f'exit 90; }}; '
            f'd=$(mktemp -d {SECRETS_FOLDER}/cf-luks.XXXXXX); '
            f"trap 'rm -rf \"$d\"' EXIT; trap 'rm -rf \"$d\"; exit 91' HUP INT TERM; "
            f"{reads}{body}")


def add_key_command(device: str, slot: int, pbkdf: Pbkdf, existing: str,
                    new: str) -> tuple[str, bytes]:
    """(command, stdin) adding `new` to `slot`, authorised by `existing`."""
    body = (f"cryptsetup luksAddKey --batch-mode {pbkdf.arguments()} --key-slot {int(slot)} "
            f'--key-file "$d/existing" {shlex.quote(device)} "$d/new"')
    return _with_secret_files(("existing", "new"), body), _secrets_input(existing, new)


VOLUME_KEY_BYTES = 64  # aes-xts-plain64 with two 256-bit keys (LUKS2's default, said aloud)


def format_command(device: str, pbkdf: Pbkdf, uuid: str, label: str, passphrase: str,
                   recovery_key: str | None, open_as: str | None) -> tuple[str, bytes]:
    """(command, stdin) making `device` a LUKS2 volume with `passphrase` in the escrow slot
    and `recovery_key` (when given) in the recovery slot, then mapping it as `open_as`.

    The volume key is drawn once into the same private tmpfs folder as the secrets, so the
    recovery slot is added and the volume opened with it: no key derivation to unlock slot
    0 again, and no second benchmark. The recovery slot costs exactly what cryptsetup's
    benchmark gave slot 0, read back from the header: its iterations, and its memory and
    threads too (the benchmark lowers the memory below `pbkdf.memory_kib` on a CPU too slow
    for the minimum of 4 iterations at that size). The folder goes when the command ends.
    """
    names = ("passphrase", "recovery") if recovery_key is not None else ("passphrase",)
    escrow, recovery = INSTALL_SLOTS[ESCROW], INSTALL_SLOTS[RECOVERY]
    target = shlex.quote(device)
    body = (f'head -c {VOLUME_KEY_BYTES} /dev/urandom > "$d/volume-key"; '
            f"cryptsetup luksFormat --batch-mode --type luks2 --cipher aes-xts-plain64 "
            f"--key-size {VOLUME_KEY_BYTES * 8} {pbkdf.arguments()} --key-slot {escrow} "
            f"--uuid {shlex.quote(uuid)} --label {shlex.quote(label)} "
            f'--volume-key-file "$d/volume-key" --key-file "$d/passphrase" {target}; ')
    if recovery_key is not None:
        # Only digits are captured, so the eval sets t, m and p and nothing else.
        fields = ";".join(f"s/^\\t{field}: *\\([0-9][0-9]*\\)$/{name}=\\1/p"
                          for field, name in (("Time cost", "t"), ("Memory", "m"),
                                              ("Threads", "p")))
        body += (f"t= m= p=; eval \"$(cryptsetup luksDump {target} | sed -n "
                 f"'/^  {escrow}: luks2/,/^  [0-9]*: /{{{fields}}}')\"; "
                 f'[ -n "$t" ] && [ -n "$m" ] && [ -n "$p" ] || {{ echo "no argon2 costs '
                 f'for key slot {escrow} in the LUKS header" >&2; exit 92; }}; '
                 f"cryptsetup luksAddKey --batch-mode --pbkdf argon2id "
                 f'--pbkdf-force-iterations "$t" --pbkdf-memory "$m" --pbkdf-parallel "$p" '
                 f'--key-slot {recovery} --volume-key-file "$d/volume-key" {target} '
                 f'"$d/recovery"; ')
    if open_as is not None:
        body += (f'cryptsetup open --allow-discards --volume-key-file "$d/volume-key" '
                 f"{target} {shlex.quote(open_as)}; ")
    secrets_in = (passphrase,) if recovery_key is None else (passphrase, recovery_key)
    return _with_secret_files(names, body), _secrets_input(*secrets_in)


def kill_slot_command(device: str, slot: int, remaining: str) -> tuple[str, bytes]:
    """(command, stdin) wiping `slot`; cryptsetup checks `remaining` opens another slot."""
    body = (f'cryptsetup luksKillSlot --key-file "$d/remaining" {shlex.quote(device)} '
            f"{int(slot)} </dev/null")
    return _with_secret_files(("remaining",), body), _secrets_input(remaining)


def test_key_command(device: str, slot: int | None = None) -> str:
    """A command whose stdin is a key: exit 0 when it opens `slot` (or any slot, printing
    "Key slot N unlocked."), 2 when it opens none. Nothing is mapped."""
    slot_option = "" if slot is None else f" --key-slot {int(slot)}"
    return (f"cryptsetup open --verbose --test-passphrase{slot_option} --key-file - "
            f"{shlex.quote(device)}")


def dump_command(device: str) -> str:
    return f"cryptsetup luksDump {shlex.quote(device)}"


def device_for(layout_luks_uuid: str) -> str:
    """Where an installed node's LUKS volume is, RAID or not: udev's link by its UUID."""
    return f"/dev/disk/by-uuid/{layout_luks_uuid}"


# ---- reading a volume ----

_SLOT_LINE = re.compile(r"^\s{2}(\d+): luks2\s*$")


def active_slots(dump: str) -> list[int]:
    """The active key slots in `cryptsetup luksDump` output (LUKS2)."""
    slots: list[int] = []
    section = ""
    for line in dump.splitlines():
        if line and not line[0].isspace():
            section = line.strip().rstrip(":")
            continue
        if section == "Keyslots":
            match = _SLOT_LINE.match(line)
            if match:
                slots.append(int(match.group(1)))
    return sorted(slots)


def slot_memory_kib(dump: str, slot: int) -> int | None:
    """The argon2 memory cost of `slot` in luksDump output, or None."""
    inside = False
    for line in dump.splitlines():
        match = _SLOT_LINE.match(line)
        if match:
            inside = int(match.group(1)) == slot
            continue
        if line and not line[0].isspace():
            inside = False
        if inside and line.strip().startswith("Memory:"):
            return int(line.split(":", 1)[1].strip())
    return None


def pbkdf_like(dump: str, slot: int) -> Pbkdf:
    """A new slot costs what `slot` costs: the installer chose its memory for the node (an
    initramfs must afford it); cryptsetup benchmarks the iterations as at install."""
    return Pbkdf(slot_memory_kib(dump, slot) or 1048576)


class LuksVolume:
    """One LUKS2 volume reached through a shell (a rescue system or a booted node)."""

    def __init__(self, shell: Shell, device: str, what: str) -> None:
        self.shell = shell
        self.device = device
        self.what = what

    def dump(self) -> str:
        return self.shell.run(dump_command(self.device), what=f"luksDump on {self.what}")[1]

    def slots(self) -> list[int]:
        return active_slots(self.dump())

    def opens(self, key: str, slot: int | None = None) -> int | None:
        """The slot `key` opens (limited to `slot` if given), or None."""
        status, out, err = self.shell.run(test_key_command(self.device, slot),
                                          input_data=key.encode(), check=False)
        if status == 0:
            match = re.search(r"Key slot (\d+) unlocked", out + err)
            if match:
                return int(match.group(1))
            if slot is not None:
                return slot
            raise KeySlotError(f"cryptsetup on {self.what} opened {self.device} but did not "
                               "say with which key slot; expected 'Key slot N unlocked.'")
        if status == 2 or "No key available" in out + err:
            return None
        tail = " ".join((out + err).split())[-300:]
        raise KeySlotError(f"cannot test a key on {self.what} ({self.device}, exit {status}): "
                           f"{tail}")

    def add(self, slot: int, pbkdf: Pbkdf, existing: str, new: str) -> None:
        command, stdin = add_key_command(self.device, slot, pbkdf, existing, new)
        self.shell.run(command, input_data=stdin, what=f"luksAddKey (slot {slot})")

    def kill(self, slot: int, remaining: str) -> None:
        command, stdin = kill_slot_command(self.device, slot, remaining)
        self.shell.run(command, input_data=stdin, what=f"luksKillSlot (slot {slot})")

    def free_slot(self, taken: list[int]) -> int:
        for slot in range(LUKS2_SLOTS):
            if slot not in taken:
                return slot
        raise KeySlotError(f"{self.what}: all {LUKS2_SLOTS} LUKS key slots are in use; remove "
                           "unknown ones by hand (cryptsetup luksKillSlot) first")


# ---- facts ----

def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def record_install(store: StateStore, node: str, at: str | None = None) -> None:
    """The installer's slots: escrow in 0, recovery in 1."""
    with store.transaction():
        store.set_fact(node, LUKS_SLOTS, dict(INSTALL_SLOTS))
        store.set_fact(node, LUKS_ROTATED_AT, at or now_iso())
        store.delete_fact(node, LUKS_ROTATION)
        store.delete_fact(node, LUKS_RECOVERY_CHANGE)


def recorded_slots(store: StateStore, node: str) -> dict[str, int]:
    value = store.get_fact(node, LUKS_SLOTS)
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
            isinstance(slot, int) for slot in value.values()):
        raise StateError(f"node {node}: fact {LUKS_SLOTS!r} is {value!r}, not an object of "
                         "slot numbers; fix or delete the fact")
    return {str(role): int(slot) for role, slot in value.items()}


def _pending(store: StateStore, node: str, key: str) -> dict[str, Any] | None:
    value = store.get_fact(node, key)
    if value is None:
        return None
    if not isinstance(value, Mapping) or not isinstance(value.get("to"), int):
        raise StateError(f"node {node}: fact {key!r} is {value!r}, not a recorded key slot "
                         "change; delete the fact after checking the volume by hand")
    return dict(value)


# ---- rotation ----

class Keys(Protocol):
    """The keystore as rotation uses it."""

    def get(self, node: str) -> str: ...

    def replace(self, node: str, passphrase: str) -> None: ...


@dataclass
class RotationResult:
    node: str
    old_slot: int | None
    new_slot: int | None
    dry_run: bool = False
    resumed: bool = False
    actions: list[str] = field(default_factory=list)
    rotated_at: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "old_slot": self.old_slot, "new_slot": self.new_slot,
                "dry_run": self.dry_run, "resumed": self.resumed, "actions": self.actions,
                "rotated_at": self.rotated_at or None}


def rotate(volume: LuksVolume, store: StateStore, keys: Keys, node: str, *,
           pbkdf: Pbkdf | None = None, dry_run: bool = False,
           log: Callable[[str], None] = lambda message: None) -> RotationResult:
    """Replace the node's escrowed passphrase by a new one (see the module docstring). One
    key slot change per node at a time (a lock in the state store)."""
    with store.lock(_lock_name(node), timeout=LOCK_TIMEOUT):
        return _rotate(volume, store, keys, node, pbkdf, dry_run, log)


def _lock_name(node: str) -> str:
    return f"luks-{node}"


LOCK_TIMEOUT = 10.0


def _rotate(volume: LuksVolume, store: StateStore, keys: Keys, node: str,
            pbkdf: Pbkdf | None, dry_run: bool, log: Callable[[str], None]) -> RotationResult:
    current = keys.get(node)
    active = volume.slots()
    current_slot = volume.opens(current)
    if current_slot is None:
        raise KeySlotError(f"{node}: the keystore's passphrase opens no key slot of "
                           f"{volume.device}; nothing was changed (check the volume with "
                           "the recovery key)")
    slots = recorded_slots(store, node)
    recovery = slots.get(RECOVERY)
    result = RotationResult(node, current_slot, None, dry_run=dry_run)
    pending = _pending(store, node, LUKS_ROTATION)

    def step(action: str, function: Callable[[], None]) -> None:
        result.actions.append(action)
        if dry_run:
            return
        log(f"{node}: {action}")
        function()

    if pending is not None:
        result.resumed = True
        old, new = pending.get("from"), int(pending["to"])
        if current_slot == new:
            # The keystore holds the new passphrase already: only the old slot is left.
            result.old_slot, result.new_slot = old, new
            if isinstance(old, int) and old in active and old not in (new, recovery):
                step(f"remove the old passphrase's slot {old}",
                     lambda: volume.kill(old, current))
            return _finish(store, node, result, new, dry_run)
        if new in active and new not in (current_slot, recovery):
            # Added, but the keystore never got its passphrase: nobody knows it any more.
            step(f"remove slot {new}, left half-rotated (its passphrase was "
                 "never stored)", lambda: volume.kill(new, current))
            active = [slot for slot in active if slot != new]
    taken = sorted(set(active) | ({recovery} if recovery is not None else set()))
    new_slot = volume.free_slot(taken)
    result.old_slot, result.new_slot = current_slot, new_slot
    passphrase = new_passphrase()
    if pbkdf is None:
        pbkdf = pbkdf_like(volume.dump(), current_slot)
    if not dry_run:
        store.set_fact(node, LUKS_ROTATION, {"from": current_slot, "to": new_slot,
                                             "started_at": now_iso()})
    step(f"add the new passphrase to slot {new_slot}",
         lambda: volume.add(new_slot, pbkdf, current, passphrase))

    def prove() -> None:
        if volume.opens(passphrase, new_slot) != new_slot:
            raise KeySlotError(f"{node}: the new passphrase does not open slot {new_slot} "
                               "after luksAddKey; the keystore keeps the old one (run "
                               "`clonefleet keys rotate` again)")

    step(f"prove the new passphrase opens slot {new_slot}", prove)
    step("store the new passphrase in the keystore",
         lambda: keys.replace(node, passphrase))
    step(f"remove the old passphrase's slot {current_slot}",
         lambda: volume.kill(current_slot, passphrase))
    return _finish(store, node, result, new_slot, dry_run)


def _finish(store: StateStore, node: str, result: RotationResult, new_slot: int,
            dry_run: bool) -> RotationResult:
    result.actions.append("record the slots and the rotation time")
    if dry_run:
        return result
    slots = recorded_slots(store, node)
    slots[ESCROW] = new_slot
    result.rotated_at = now_iso()
    with store.transaction():
        store.set_fact(node, LUKS_SLOTS, slots)
        store.set_fact(node, LUKS_ROTATED_AT, result.rotated_at)
        store.delete_fact(node, LUKS_ROTATION)
    return result


# ---- a new recovery key ----

@dataclass
class RecoveryResult:
    node: str
    old_slot: int | None
    new_slot: int
    recovery_key: str = ""
    dry_run: bool = False
    actions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "old_slot": self.old_slot, "new_slot": self.new_slot,
                "dry_run": self.dry_run, "actions": self.actions,
                "recovery_key": self.recovery_key or None}


def replace_recovery(volume: LuksVolume, store: StateStore, keys: Keys, node: str, *,
                     pbkdf: Pbkdf | None = None, dry_run: bool = False,
                     log: Callable[[str], None] = lambda message: None) -> RecoveryResult:
    """Add a fresh recovery key to a free slot, prove it, then remove the old recovery slot.
    The new key is returned to be shown once. A run that stopped before returning left a slot
    whose key nobody saw: the next run removes it first."""
    with store.lock(_lock_name(node), timeout=LOCK_TIMEOUT):
        return _replace_recovery(volume, store, keys, node, pbkdf, dry_run, log)


def _replace_recovery(volume: LuksVolume, store: StateStore, keys: Keys, node: str,
                      pbkdf: Pbkdf | None, dry_run: bool,
                      log: Callable[[str], None]) -> RecoveryResult:
    current = keys.get(node)
    active = volume.slots()
    escrow_slot = volume.opens(current)
    if escrow_slot is None:
        raise KeySlotError(f"{node}: the keystore's passphrase opens no key slot of "
                           f"{volume.device}; nothing was changed")
    slots = recorded_slots(store, node)
    old = slots.get(RECOVERY)
    pending = _pending(store, node, LUKS_RECOVERY_CHANGE)
    actions: list[str] = []
    if pending is not None:
        unseen = int(pending["to"])
        if unseen in active and unseen not in (escrow_slot, old):
            actions.append(f"remove slot {unseen}, whose recovery key was never shown")
            if not dry_run:
                volume.kill(unseen, current)
            active = [slot for slot in active if slot != unseen]
        if isinstance(pending.get("from"), int):
            old = int(pending["from"])
    new_slot = volume.free_slot(sorted(set(active) | {escrow_slot}))
    result = RecoveryResult(node, old if old in active else None, new_slot, dry_run=dry_run,
                            actions=actions)
    result.actions.append(f"add a new recovery key to slot {new_slot}")
    if result.old_slot is not None:
        result.actions.append(f"remove the old recovery slot {result.old_slot}")
    if dry_run:
        return result
    if pbkdf is None:
        pbkdf = pbkdf_like(volume.dump(), escrow_slot)
    recovery_key = new_recovery_key()
    store.set_fact(node, LUKS_RECOVERY_CHANGE, {"from": result.old_slot, "to": new_slot,
                                                "started_at": now_iso()})
    log(f"{node}: add a new recovery key to slot {new_slot}")
    volume.add(new_slot, pbkdf, current, recovery_key)
    if volume.opens(recovery_key, new_slot) != new_slot:
        raise KeySlotError(f"{node}: the new recovery key does not open slot {new_slot}; run "
                           "`clonefleet keys recovery --new` again")
    if result.old_slot is not None and result.old_slot != escrow_slot:
        log(f"{node}: remove the old recovery slot {result.old_slot}")
        volume.kill(result.old_slot, current)
    slots[RECOVERY] = new_slot
    slots.setdefault(ESCROW, escrow_slot)
    with store.transaction():
        store.set_fact(node, LUKS_SLOTS, slots)
        store.delete_fact(node, LUKS_RECOVERY_CHANGE)
    result.recovery_key = recovery_key
    return result


# ---- status ----

@dataclass
class SlotStatus:
    node: str
    slots: dict[str, int]
    rotated_at: str | None
    rotation_pending: bool
    live_slots: list[int] | None = None  # from luksDump, with --live
    live_error: str = ""

    @property
    def has_recovery(self) -> bool:
        return RECOVERY in self.slots and (self.live_slots is None
                                          or self.slots[RECOVERY] in self.live_slots)

    @property
    def unknown_slots(self) -> list[int]:
        if self.live_slots is None:
            return []
        return [slot for slot in self.live_slots if slot not in self.slots.values()]

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "slots": self.slots, "rotated_at": self.rotated_at,
                "recovery_slot": self.has_recovery, "rotation_pending": self.rotation_pending,
                "live_slots": self.live_slots, "unknown_slots": self.unknown_slots,
                "live_error": self.live_error or None}


def slot_status(store: StateStore, node: str) -> SlotStatus:
    rotated = store.get_fact(node, LUKS_ROTATED_AT)
    return SlotStatus(node, recorded_slots(store, node),
                      str(rotated) if rotated else None,
                      store.get_fact(node, LUKS_ROTATION) is not None
                      or store.get_fact(node, LUKS_RECOVERY_CHANGE) is not None)


# ---- a booted node ----

def node_volume(store: StateStore, state_dir: Path, node: str, key_path: Path,
                timeout: float = 20) -> LuksVolume:
    """The node's root volume over its sshd, the host key checked against the pin (the
    fleet's known_hosts, written from the store first). The caller closes `volume.shell`."""
    from clonefleet import nodefacts
    from clonefleet.known_hosts import fleet_known_hosts

    known_hosts = fleet_known_hosts(state_dir)
    facts = nodefacts.load_pinned(store, node, known_hosts)
    if facts.layout is None or not facts.ssh_host_key:
        raise StateError(f"node {node} has no recorded disk layout or pinned sshd key; it was "
                         "not installed by this controller (provision it first)")
    shell = nodefacts.sshd_shell(facts, known_hosts, key_path, timeout)
    return LuksVolume(shell, device_for(facts.layout.luks_uuid), f"node {node}")
