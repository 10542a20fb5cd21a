"""LUKS key slots with the real cryptsetup on a LUKS2 volume in a file, driven over a real
sshd on loopback (tests/sshd_fixture.py, logged in as root) with the same commands the
installer and `clonefleet keys` run on a node: the recovery slot the installer adds,
rotation end to end, rotation stopped after each step and finished by a re-run, a new
recovery key, and `keys status`."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sshd_fixture import Sshd, sshd_fleet

from clonefleet import keyslots, nodefacts
from clonefleet.cli import _register, cli
from clonefleet.image.node import NodeLayout
from clonefleet.keyslots import (
    ESCROW,
    INSTALL_SLOTS,
    RECOVERY,
    KeySlotError,
    LuksVolume,
    Pbkdf,
    add_key_command,
    format_command,
    slot_memory_kib,
)
from clonefleet.keystore import Keystore
from clonefleet.providers.base import ServerInfo, SshAccess
from clonefleet.ssh import RemoteShell
from clonefleet.state import StateStore, open_store

pytestmark = pytest.mark.integration

_register()

# Cheap key derivation: these volumes guard nothing, and every test opens them many times.
FAST = Pbkdf(memory_kib=32, iterations=4)
NODE = "fsn-1"
LUKS_UUID = "5f1b6c2e-0c1a-4d0e-9a51-2f3c4d5e6f70"


def cryptsetup_available() -> bool:
    return shutil.which("cryptsetup") is not None


@dataclasses.dataclass
class Lab:
    """A 'node': a LUKS2 file formatted as the installer does (escrowed passphrase in slot 0),
    reached over sshd; the controller's keystore and state store."""

    volume_path: Path
    volume: LuksVolume
    keystore: Keystore
    store: StateStore
    shell: RemoteShell
    sshd: Sshd
    folder: Path

    def opens(self, key: str) -> int | None:
        return self.volume.opens(key)


@pytest.fixture
def lab(tmp_path: Path, sshd: Sshd) -> Iterator[Lab]:
    if not cryptsetup_available():
        pytest.fail("cryptsetup is missing; run scripts/setup (package cryptsetup-bin)")
    keystore = Keystore(tmp_path / "keystore", tmp_path / "age.key")
    passphrase = keystore.create(NODE)
    volume_path = tmp_path / "root.luks"
    with volume_path.open("wb") as handle:
        handle.truncate(20 << 20)
    subprocess.run(["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2",
                    *FAST.arguments().split(), "--uuid", LUKS_UUID, "--key-file", "-",
                    str(volume_path)], input=passphrase.encode(), check=True, timeout=60)
    shell = RemoteShell(SshAccess("127.0.0.1", sshd.port), sshd.client_key,
                        pinned=sshd.host_key, what="test node")
    store = open_store(tmp_path / "state")
    yield Lab(volume_path, LuksVolume(shell, str(volume_path), "test node"), keystore, store,
              shell, sshd, tmp_path)
    shell.close()
    store.close()


def install_recovery(lab: Lab) -> str:
    """What the installer does after luksFormat, with its command builder."""
    recovery_key = keyslots.new_recovery_key()
    command, stdin = add_key_command(str(lab.volume_path), INSTALL_SLOTS[RECOVERY], FAST,
                                     lab.keystore.get(NODE), recovery_key)
    lab.shell.run(f"set -e; {command}", input_data=stdin, what="luksAddKey")
    keyslots.record_install(lab.store, NODE)
    return recovery_key


class Crash(Exception):
    """The process dying right there."""


class CrashingVolume(LuksVolume):
    """The real volume; dies right after the real `add` or `kill` when told to."""

    def __init__(self, volume: LuksVolume, after: str) -> None:
        super().__init__(volume.shell, volume.device, volume.what)
        self.after = after

    def add(self, slot: int, pbkdf: Pbkdf, existing: str, new: str) -> None:
        super().add(slot, pbkdf, existing, new)
        if self.after == "add":
            raise Crash("after luksAddKey")

    def kill(self, slot: int, remaining: str) -> None:
        super().kill(slot, remaining)
        if self.after == "kill":
            raise Crash("after luksKillSlot")


class CrashingKeystore:
    """The real keystore; dies just before ("prove": the slot was proven) or just after
    ("store") replacing the node's entry when told to."""

    def __init__(self, keystore: Keystore, after: str) -> None:
        self.keystore = keystore
        self.after = after

    def get(self, node: str) -> str:
        return self.keystore.get(node)

    def replace(self, node: str, passphrase: str) -> None:
        if self.after == "prove":
            raise Crash("before the keystore write")
        self.keystore.replace(node, passphrase)
        if self.after == "store":
            raise Crash("after the keystore write")


def leftover_secret_folders() -> list[str]:
    return sorted(str(path) for path in Path("/dev/shm").glob("cf-luks.*"))


def test_recovery_key_is_human_typeable_and_200_bits() -> None:
    key = keyslots.new_recovery_key()
    groups = key.split("-")
    assert len(groups) == 8 and all(len(group) == 5 for group in groups)
    assert set("".join(groups)) <= set(keyslots.RECOVERY_ALPHABET)
    assert not set("ILOU") & set(key)
    assert keyslots.new_recovery_key() != key


def test_installer_recovery_slot_opens_the_volume_next_to_the_escrowed_passphrase(
        lab: Lab) -> None:
    before = leftover_secret_folders()
    recovery_key = install_recovery(lab)

    assert lab.volume.slots() == [0, 1]
    assert lab.opens(lab.keystore.get(NODE)) == 0
    assert lab.opens(recovery_key) == 1
    assert lab.opens("not-the-key") is None
    assert leftover_secret_folders() == before  # the tmpfs key files are gone
    command, _ = add_key_command("/dev/x", 1, FAST, "old-secret", "new-secret")
    assert "old-secret" not in command and "new-secret" not in command
    assert lab.store.get_fact(NODE, keyslots.LUKS_SLOTS) == {ESCROW: 0, RECOVERY: 1}


def test_installer_format_gives_both_slots_the_cost_cryptsetup_measured_once(
        lab: Lab) -> None:
    """The installer's one command: luksFormat benchmarks slot 0, the recovery slot is added
    with the volume key at slot 0's iterations (read back from the header), nothing is left
    on the tmpfs. (Mapping the volume needs device-mapper, which the lab VMs exercise.)"""
    before = leftover_secret_folders()
    path = lab.folder / "fresh.luks"
    with path.open("wb") as handle:
        handle.truncate(20 << 20)
    passphrase, recovery_key = keyslots.new_passphrase(), keyslots.new_recovery_key()
    quick = Pbkdf(memory_kib=64, iter_time_ms=100)  # still benchmarked by luksFormat
    command, stdin = format_command(str(path), quick, LUKS_UUID, "cf-root", passphrase,
                                    recovery_key, open_as=None)
    assert passphrase not in command and recovery_key not in command

    lab.shell.run(f"set -e; {command}", input_data=stdin, what="format")

    volume = LuksVolume(lab.shell, str(path), "test node")
    dump = volume.dump()
    assert volume.slots() == [INSTALL_SLOTS[ESCROW], INSTALL_SLOTS[RECOVERY]]
    for cost in ("Time cost:", "Memory:", "Threads:"):
        values = [line.split(":")[1].strip() for line in dump.splitlines()
                  if line.strip().startswith(cost)]
        assert len(values) == 2 and values[0] == values[1], (cost, values)
    assert slot_memory_kib(dump, 1) == slot_memory_kib(dump, 0) <= 64
    assert LUKS_UUID in dump and "cf-root" in dump
    assert volume.opens(passphrase) == INSTALL_SLOTS[ESCROW]
    assert volume.opens(recovery_key) == INSTALL_SLOTS[RECOVERY]
    assert volume.opens(keyslots.new_passphrase()) is None
    assert leftover_secret_folders() == before


def test_rotation_replaces_the_escrowed_passphrase_and_keeps_the_recovery_key(
        lab: Lab) -> None:
    recovery_key = install_recovery(lab)
    old = lab.keystore.get(NODE)

    result = keyslots.rotate(lab.volume, lab.store, lab.keystore, NODE, pbkdf=FAST)

    new = lab.keystore.get(NODE)
    assert new != old
    assert (result.old_slot, result.new_slot) == (0, 2)
    assert lab.volume.slots() == [1, 2]
    assert lab.opens(new) == 2
    assert lab.opens(old) is None  # the old passphrase is refused
    assert lab.opens(recovery_key) == 1
    assert lab.store.get_fact(NODE, keyslots.LUKS_SLOTS) == {ESCROW: 2, RECOVERY: 1}
    assert lab.store.get_fact(NODE, keyslots.LUKS_ROTATED_AT) == result.rotated_at
    assert lab.store.get_fact(NODE, keyslots.LUKS_ROTATION) is None

    again = keyslots.rotate(lab.volume, lab.store, lab.keystore, NODE, pbkdf=FAST)
    assert (again.old_slot, again.new_slot) == (2, 0)  # the freed slot is used again
    assert lab.volume.slots() == [0, 1] and lab.opens(lab.keystore.get(NODE)) == 0


@pytest.mark.parametrize("stop_after", ["add", "prove", "store", "kill"])
def test_rotation_stopped_after_any_step_is_finished_by_a_rerun_with_nothing_lost(
        lab: Lab, stop_after: str) -> None:
    recovery_key = install_recovery(lab)
    old = lab.keystore.get(NODE)

    with pytest.raises(Crash):
        keyslots.rotate(CrashingVolume(lab.volume, stop_after), lab.store,
                        CrashingKeystore(lab.keystore, stop_after), NODE, pbkdf=FAST)

    # At the crash: the keystore's passphrase opens the volume, and so does the recovery key.
    assert lab.opens(lab.keystore.get(NODE)) is not None
    assert lab.opens(recovery_key) == 1
    assert lab.store.get_fact(NODE, keyslots.LUKS_ROTATION) is not None

    result = keyslots.rotate(lab.volume, lab.store, lab.keystore, NODE, pbkdf=FAST)

    assert result.resumed
    new = lab.keystore.get(NODE)
    assert new != old
    assert sorted(lab.volume.slots()) == sorted([1, result.new_slot])
    assert lab.opens(new) == result.new_slot
    assert lab.opens(old) is None
    assert lab.opens(recovery_key) == 1
    assert lab.store.get_fact(NODE, keyslots.LUKS_ROTATION) is None
    assert lab.store.get_fact(NODE, keyslots.LUKS_SLOTS) == {ESCROW: result.new_slot,
                                                            RECOVERY: 1}


def test_rotation_dry_run_changes_nothing(lab: Lab) -> None:
    install_recovery(lab)
    old = lab.keystore.get(NODE)

    result = keyslots.rotate(lab.volume, lab.store, lab.keystore, NODE, pbkdf=FAST,
                             dry_run=True)

    assert result.dry_run and result.new_slot == 2
    assert any("slot 2" in action for action in result.actions)
    assert lab.keystore.get(NODE) == old and lab.volume.slots() == [0, 1]
    assert lab.store.get_fact(NODE, keyslots.LUKS_ROTATION) is None


def test_rotation_refuses_when_the_keystore_passphrase_opens_no_slot(lab: Lab) -> None:
    install_recovery(lab)
    lab.keystore.replace(NODE, "a-passphrase-the-volume-never-had")

    with pytest.raises(KeySlotError, match="opens no key slot"):
        keyslots.rotate(lab.volume, lab.store, lab.keystore, NODE, pbkdf=FAST)

    assert lab.volume.slots() == [0, 1]


def test_new_recovery_key_replaces_the_old_one_and_a_stopped_run_leaves_no_unseen_slot(
        lab: Lab) -> None:
    old_recovery = install_recovery(lab)
    with pytest.raises(Crash):
        keyslots.replace_recovery(CrashingVolume(lab.volume, "add"), lab.store, lab.keystore,
                                  NODE, pbkdf=FAST)
    assert lab.volume.slots() == [0, 1, 2]  # slot 2's key was never shown

    result = keyslots.replace_recovery(lab.volume, lab.store, lab.keystore, NODE, pbkdf=FAST)

    assert result.old_slot == 1 and result.recovery_key
    assert lab.volume.slots() == sorted([0, result.new_slot])
    assert lab.opens(result.recovery_key) == result.new_slot
    assert lab.opens(old_recovery) is None
    assert lab.opens(lab.keystore.get(NODE)) == 0
    assert lab.store.get_fact(NODE, keyslots.LUKS_SLOTS) == {ESCROW: 0,
                                                            RECOVERY: result.new_slot}


def record_node(lab: Lab) -> Path:
    """The fleet file and the facts `keys rotate|status` read for NODE (sshd, pin, layout)."""
    fleet_path = sshd_fleet(lab.folder, lab.sshd, "keystest")
    store = open_store(lab.folder / "state" / "keystest")
    nodefacts.record_server(store, NODE, ServerInfo(
        node=NODE, server_id="lab-fsn-1", status="disk",
        ssh=SshAccess("127.0.0.1", lab.sshd.port), unlock=SshAccess("127.0.0.1", 1)))
    nodefacts.record_host_keys(store, NODE, ssh_host_key=lab.sshd.host_key,
                               dropbear_host_key=lab.sshd.host_key)
    nodefacts.record_layout(store, NODE, NodeLayout(
        hostname=NODE, domain="keystest.test", luks_uuid=LUKS_UUID,
        root_fs_uuid="r", boot_fs_uuid="b", raid=False))
    keyslots.record_install(store, NODE, at="2026-11-30T12:00:00+00:00")
    store.close()
    return fleet_path


def test_keys_rotate_and_status_commands_over_the_pinned_sshd(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    recovery_key = install_recovery(lab)
    fleet_path = record_node(lab)
    state_dir = lab.folder / "state" / "keystest"
    # The fleet's keystore holds this node's passphrase; the "disk" is the file volume.
    shutil.copytree(lab.folder / "keystore", state_dir / "keystore")
    monkeypatch.setenv("CLONEFLEET_AGE_KEY", str(lab.folder / "age.key"))
    monkeypatch.setattr(keyslots, "device_for", lambda uuid: str(lab.volume_path))
    monkeypatch.setattr(keyslots, "pbkdf_like", lambda dump, slot: FAST)
    env = {"CLONEFLEET_STATE_DIR": str(lab.folder / "state")}
    base = ["--fleet", str(fleet_path)]
    fleet_keystore = Keystore(state_dir / "keystore", lab.folder / "age.key")
    old = fleet_keystore.get(NODE)

    planned = CliRunner().invoke(cli, [*base, "keys", "rotate", NODE, "--dry-run"], env=env)
    assert planned.exit_code == 0, planned.output
    assert "would add the new passphrase to slot 2" in planned.output
    assert fleet_keystore.get(NODE) == old

    status = CliRunner().invoke(cli, [*base, "--json", "keys", "status", "--live"], env=env)
    assert status.exit_code == 0, status.output
    [before] = json.loads(status.output)["nodes"]
    assert before["slots"] == {ESCROW: 0, RECOVERY: 1} and before["live_slots"] == [0, 1]
    assert before["recovery_slot"] and before["rotated_at"] == "2026-11-30T12:00:00+00:00"

    rotated = CliRunner().invoke(cli, [*base, "keys", "rotate", NODE], env=env)
    assert rotated.exit_code == 0, rotated.output
    assert f"{NODE}: rotated: the passphrase in slot 2 replaces slot 0" in rotated.output
    new = fleet_keystore.get(NODE)
    assert new != old and lab.opens(new) == 2 and lab.opens(old) is None
    assert lab.opens(recovery_key) == 1

    table = CliRunner().invoke(cli, [*base, "keys", "status", NODE, "--live"], env=env)
    assert table.exit_code == 0, table.output
    assert "escrow 2" in table.output and "recovery 1" in table.output
    assert "2026-11-30T12:00:00" not in table.output  # the rotation time replaced it


def test_keys_rotate_names_an_unprovisioned_node_in_one_line(
        lab: Lab, tmp_path: Path) -> None:
    fleet_path = sshd_fleet(lab.folder, lab.sshd, "emptyfleet")
    result = CliRunner().invoke(cli, ["--fleet", str(fleet_path), "keys", "rotate", NODE],
                                env={"CLONEFLEET_STATE_DIR": str(tmp_path / "state2")})
    assert result.exit_code == 3, result.output
    assert f"node {NODE}" in result.output and "provision it first" in result.output
    assert "Traceback" not in result.output
