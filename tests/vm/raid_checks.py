"""Checks of a two-disk lab node (RAID1 under LUKS, booting OVMF) and its key slots, for the
lab fleet module (tests/vm/test_lab_fleet.py)."""

from __future__ import annotations

import json
from collections.abc import Callable

from clonefleet import nodefacts
from clonefleet.keyslots import LuksVolume, active_slots, device_for
from clonefleet.known_hosts import fleet_known_hosts
from clonefleet.lab import qemu
from clonefleet.ssh import generate_ed25519, wait_for_ssh
from clonefleet.unlock import unlock

from .conftest import Lab
from .unlockd_checks import BOOT_SECONDS

BOOTX64 = "EFI/BOOT/BOOTX64.EFI"


def esp_check(serial: str) -> str:
    """A command that succeeds if the disk's ESP holds GRUB at the removable path: the ESP
    is looked at where it is mounted (/boot/efi for the first disk), else mounted read-only
    for the check and unmounted again."""
    return (f"part=$(readlink -f /dev/disk/by-id/virtio-{serial}-part2); "
            'dir=$(findmnt -rn -o TARGET -S "$part" | head -n1); mounted=; '
            'if [ -z "$dir" ]; then dir=$(mktemp -d); mount -o ro -t vfat "$part" "$dir" '
            "|| exit 3; mounted=1; fi; "
            f'test -s "$dir/{BOOTX64}"; rc=$?; '
            'if [ -n "$mounted" ]; then umount "$dir"; rmdir "$dir"; fi; exit $rc')


def check_mirrored_uefi_node(lab: Lab, node_name: str) -> None:
    """Both arrays mirrored on both disks under LUKS, GRUB on each disk for BIOS and UEFI,
    booted by OVMF, the first ESP mountable from fstab."""
    with lab.shell(node_name) as shell:
        mdstat = shell.run("cat /proc/mdstat")[1]
        assert mdstat.count(": active raid1 ") == 2 and mdstat.count("[UU]") == 2, mdstat
        status = shell.run("cryptsetup status root")[1]
        assert "type:    LUKS2" in status
        device = next(line.split()[1] for line in status.splitlines()
                      if line.strip().startswith("device:"))
        assert device.startswith("/dev/md"), status
        # Two key slots, no more: the escrowed passphrase (0) and the recovery key (1).
        dump = shell.run(f"cryptsetup luksDump {device}")[1]
        assert active_slots(dump) == [0, 1], dump
        # GRUB's core image sits in the BIOS boot partition of both disks.
        for serial in lab.fleet.node(node_name).disks:
            assert "GRUB" in shell.run(
                f"dd if=/dev/disk/by-id/virtio-{serial} bs=512 count=1 2>/dev/null | strings")[1]
        # OVMF booted it, and GRUB's EFI image is on each disk's own ESP.
        assert shell.run("test -d /sys/firmware/efi", check=False)[0] == 0, \
            "the node did not boot UEFI"
        # fstab names the first disk's ESP at /boot/efi (noauto: nothing at run time reads
        # it); mounting it by that entry works and finds that partition.
        first = lab.fleet.node(node_name).disks[0]
        expected = shell.run(f"readlink -f /dev/disk/by-id/virtio-{first}-part2")[1].strip()
        code, out, err = shell.run("mount /boot/efi && findmnt -n -o FSTYPE,SOURCE /boot/efi; "
                                   "rc=$?; umount /boot/efi; exit $rc", check=False)
        assert (code, out.split()) == (0, ["vfat", expected]), f"/boot/efi: {out}{err}"
        for serial in lab.fleet.node(node_name).disks:
            code, out, err = shell.run(esp_check(serial), check=False)
            assert code == 0, f"no {BOOTX64} on the ESP of {serial}: {out}{err}"


Unlock = Callable[[int, Callable[[], None]], None]


def check_boots_from_either_disk(lab: Lab, node_name: str, unlock: Unlock | None = None) -> None:
    """Power off, boot from each disk alone, unlock: the degraded mirror carries the node.
    Last in a module: it leaves the mirror degraded. `unlock(index, power_cycle)` does the
    power cycle and brings the node up to its sshd (default: `clonefleet unlock`)."""
    node = lab.fleet.node(node_name)
    for index, serial in enumerate(node.disks):
        def power_cycle(serial: str = serial) -> None:
            lab.provider.power_off(node)
            lab.provider.boot_disk(node, disks=[serial])

        if unlock is None:
            power_cycle()
            lab.cli("unlock", node_name)
        else:
            unlock(index, power_cycle)
        with lab.shell(node_name) as shell:
            assert "is active" in shell.run("cryptsetup status root")[1]
            disks = shell.run("ls /dev/disk/by-id")[1]
            assert f"virtio-{serial}" in disks
            other = next(s for s in node.disks if s != serial)
            assert f"virtio-{other}" not in disks
            assert "[2/1]" in shell.run("cat /proc/mdstat")[1]
            # Booted UEFI from this disk's ESP alone (OVMF has no BIOS fallback).
            assert shell.run("test -d /sys/firmware/efi", check=False)[0] == 0


def check_key_rotation(lab: Lab, node_name: str, recovery_key: str) -> None:
    """`keys rotate` on the booted node: the new passphrase opens a new slot, the old one is
    refused, the recovery key (from the provision report) still opens slot 1. A reboot
    afterwards (`check_boots_from_either_disk`) unlocks with the new passphrase."""
    old = lab.keystore.get(node_name)
    rotated = json.loads(lab.cli("--json", "keys", "rotate", node_name).stdout)
    new = lab.keystore.get(node_name)
    assert new != old and (rotated["old_slot"], rotated["new_slot"]) == (0, 2), rotated
    luks_uuid = lab.store.get_fact(node_name, "layout")["luks_uuid"]
    with lab.shell(node_name) as shell:
        volume = LuksVolume(shell, device_for(luks_uuid), node_name)
        assert volume.slots() == [1, 2]
        assert volume.opens(new) == 2
        assert volume.opens(old) is None
        assert volume.opens(recovery_key) == 1
    [status] = json.loads(lab.cli("--json", "keys", "status", node_name, "--live")
                          .stdout)["nodes"]
    assert status["slots"] == {"escrow": 2, "recovery": 1} and status["live_slots"] == [1, 2]
    assert status["rotated_at"] == rotated["rotated_at"] and not status["rotation_pending"]


def check_recovery_key_unlocks_a_boot(lab: Lab, node_name: str, recovery_key: str) -> None:
    """A hard reset (the provider's `reset`, here qemu's reset button through QMP: what a
    rollout does to a node silent after its reboot, and `clonefleet power reset`): the node
    stops in its initramfs (Dropbear answers, sshd does not);
    while the controller pins another initramfs key, `clonefleet unlock` refuses to send
    anything; then the paper recovery key typed at the node's own cryptroot-unlock through
    Dropbear, as a person holding it would (the escrowed passphrase is never sent, and no
    unlockd runs): the volume opens and the node comes up to its pinned sshd."""
    node = lab.fleet.node(node_name)
    facts = nodefacts.load(lab.store, node_name)
    config = qemu.VmConfig.load(lab.state_dir / "lab" / node_name)
    running = qemu.running_pid(config)
    lab.provider.reset(node)
    qemu.wait_for_port(config.dropbear_port, config=config, timeout=BOOT_SECONDS,
                       what="Dropbear")
    assert not qemu.answers(config.ssh_port)
    assert qemu.running_pid(config) == running  # the same VM, reset, not restarted

    # A changed Dropbear host key is refused, never auto-accepted.
    known_hosts = fleet_known_hosts(lab.state_dir)
    pinned = str(facts.dropbear_host_key)
    nodefacts.replace_host_keys(lab.store, node_name, known_hosts,
                                {nodefacts.DROPBEAR: generate_ed25519().public_line})
    refused = lab.cli("unlock", node_name, check=False)
    assert refused.returncode == 8, refused.stderr
    assert "not the key pinned at install time" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not qemu.answers(config.ssh_port)
    nodefacts.replace_host_keys(lab.store, node_name, known_hosts, {nodefacts.DROPBEAR: pinned})
    answer = unlock(facts.require_unlock(), lab.state_dir / "id_ed25519",
                    known_hosts.path, recovery_key,
                    timeout=BOOT_SECONDS, what=node_name)
    assert "unlocked" in answer or "set up successfully" in answer, answer
    with wait_for_ssh(lambda: lab.shell(node_name), BOOT_SECONDS,
                      f"{node_name} sshd") as shell:
        assert "is active" in shell.run("cryptsetup status root")[1]
        uptime = float(shell.run("cut -d' ' -f1 /proc/uptime")[1])
        assert uptime < 2 * BOOT_SECONDS, "the node did not reboot"
