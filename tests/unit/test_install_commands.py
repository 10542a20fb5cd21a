"""The commands the installer runs in a rescue system, captured from a fake shell: the hybrid
BIOS + UEFI layout on every disk, the ESPs, GRUB for both platforms, and the fstab."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, cast

import pytest

from clonefleet.errors import InstallError
from clonefleet.image.node import fstab_text
from clonefleet.install.plan import InstallPlan, make_plan
from clonefleet.install.rescue import RescueInstaller
from clonefleet.inventory import load_fleet
from clonefleet.providers.base import InitramfsNetwork
from clonefleet.ssh import RemoteShell

pytestmark = pytest.mark.unit

LAB = Path(__file__).resolve().parents[2] / "inventory" / "lab.toml"


class FakeRescue:
    """Answers like a lab rescue system; records every command."""

    def __init__(self, serials: tuple[str, ...], *, uefi: bool = False,
                 grub_platforms: str = "i386-pc x86_64-efi fonts grub.cfg",
                 luks_uuid: str = "") -> None:
        self.commands: list[str] = []
        self.uefi = uefi
        self.serials = serials
        self.grub_platforms = grub_platforms
        self.luks_uuid = luks_uuid

    def run(self, command: str, *, input_data: bytes | None = None, check: bool = True,
            timeout: float = 600, what: str = "") -> tuple[int, str, str]:
        self.commands.append(command)
        if command == "test -d /sys/firmware/efi":
            return (0 if self.uefi else 1), "", ""
        if "lsblk" in command:
            return 0, json.dumps({"blockdevices": [
                {"name": f"vd{chr(97 + i)}", "serial": s, "size": "8G", "type": "disk",
                 "model": None} for i, s in enumerate(self.serials)]}), ""
        if "/dev/disk/by-id" in command and "readlink" in command:
            return 0, "".join(f"virtio-{s}=/dev/vd{chr(97 + i)}\n"
                              for i, s in enumerate(self.serials)), ""
        if "luksDump" in command:
            return 0, f"Version: 2\nUUID: {self.luks_uuid}\nPBKDF: argon2id\n", ""
        if command.endswith("ls /mnt/clonefleet/boot"):
            return 0, "grub\ninitrd.img-6.1.0-28-amd64\nvmlinuz-6.1.0-28-amd64\nefi\n", ""
        if command.endswith("ls /mnt/clonefleet/boot/grub"):
            return 0, self.grub_platforms, ""
        return 0, "", ""

    def stream(self, command: str, source: Any, **kwargs: Any) -> str:
        self.commands.append(command)
        return ""


def _plan(node: str) -> InstallPlan:
    fleet = load_fleet(LAB)
    return make_plan(fleet, fleet.node(node), InitramfsNetwork("dhcp"))


def _install(node: str, tmp_path: Path, **fake: Any) -> tuple[FakeRescue, InstallPlan,
                                                                list[str]]:
    plan = _plan(node)
    shell = FakeRescue(plan.serials, luks_uuid=plan.layout.luks_uuid, **fake)
    logged: list[str] = []
    installer = RescueInstaller(cast(RemoteShell, shell), plan, log=logged.append)
    image, layer = tmp_path / "rootfs.tar.zst", tmp_path / "layer.tar"
    image.write_bytes(b"x")
    layer.write_bytes(b"x")
    installer.install("passphrase", image, layer)
    return shell, plan, logged


def _one(commands: list[str], needle: str) -> str:
    found = [c for c in commands if needle in c]
    assert len(found) == 1, (needle, found)
    return found[0]


def test_every_disk_gets_bios_boot_esp_boot_and_root_partitions(tmp_path: Path) -> None:
    shell, _, _ = _install("fsn-2", tmp_path)
    for serial in ("CFLAB-FSN2-A", "CFLAB-FSN2-B"):
        command = _one(shell.commands, f"sgdisk --zap-all /dev/disk/by-id/virtio-{serial}")
        assert "-n1:0:+1M -t1:ef02" in command
        assert "-n2:0:+256M -t2:ef00 -c2:cf-esp" in command
        assert "-n3:0:+512M -t3:fd00 -c3:cf-boot" in command
        assert "-n4:0:0 -t4:fd00 -c4:cf-root" in command
        assert command.endswith(f"test -e /dev/disk/by-id/virtio-{serial}-part4")


def test_single_disk_uses_linux_types_for_boot_and_root(tmp_path: Path) -> None:
    shell, _, _ = _install("fsn-1", tmp_path)
    command = _one(shell.commands, "sgdisk --zap-all")
    assert "-t2:ef00" in command and "-t3:8300" in command and "-t4:8309" in command
    assert not any("mdadm --create" in c for c in shell.commands)
    luks = _one(shell.commands, "luksFormat")
    assert "--key-file \"$d/passphrase\" /dev/disk/by-id/virtio-CFLAB-FSN1-A-part4" \
        in luks.split("cryptsetup luksFormat")[1].split(";")[0]
    mkfs = _one(shell.commands, "mkfs.ext4")
    assert "-L boot /dev/disk/by-id/virtio-CFLAB-FSN1-A-part3" in mkfs


def test_raid_mirrors_partitions_3_and_4_never_the_esp(tmp_path: Path) -> None:
    shell, plan, _ = _install("fsn-2", tmp_path)
    mdadm = _one(shell.commands, "mdadm --create")
    boot, root = mdadm.split("mdadm --create")[1:3]
    assert "--metadata=1.0" in boot and boot.count("-part3") == 2
    assert "--metadata=1.2" in root and root.count("-part4") == 2
    assert "-part2" not in mdadm
    assert f"--uuid={plan.layout.md_boot_uuid}" in boot


def test_each_esp_is_fat32_with_its_planned_volume_id(tmp_path: Path) -> None:
    shell, plan, _ = _install("fsn-2", tmp_path)
    mkfs = _one(shell.commands, "mkfs.ext4")
    ids = plan.layout.esp_volume_ids
    assert len(ids) == 2 and ids[0] != ids[1]
    assert all(re.fullmatch(r"[0-9A-F]{8}", volume_id) for volume_id in ids)
    for serial, volume_id in zip(plan.serials, ids, strict=True):
        assert (f"mkfs.vfat -F 32 -n ESP -i {volume_id} "
                f"/dev/disk/by-id/virtio-{serial}-part2") in mkfs
    assert "mkdir -p /mnt/clonefleet/boot/efi" in mkfs


def test_grub_goes_on_every_disk_for_bios_and_to_every_esp_for_uefi(tmp_path: Path) -> None:
    shell, plan, _ = _install("fsn-2", tmp_path)
    bios = _one(shell.commands, "grub-pc/install_devices")
    for serial in plan.serials:
        assert f"grub-install --target=i386-pc /dev/disk/by-id/virtio-{serial}" in bios
        efi = _one(shell.commands, f"mount -t vfat /dev/disk/by-id/virtio-{serial}-part2")
        assert ("chroot /mnt/clonefleet grub-install --target=x86_64-efi "
                "--efi-directory=/boot/efi") in efi
        for flag in ("--removable", "--no-nvram", "--bootloader-id=debian",
                     "--no-uefi-secure-boot"):
            assert flag in efi
        assert "test -s /mnt/clonefleet/boot/efi/EFI/BOOT/BOOTX64.EFI" in efi
        assert efi.rstrip().endswith("umount /mnt/clonefleet/boot/efi")
    # BIOS GRUB and update-grub first, then the ESPs one by one, the first disk first
    order = [i for i, c in enumerate(shell.commands)
             if "grub-install" in c and ("i386-pc" in c or "x86_64-efi" in c)]
    assert [("i386-pc" in shell.commands[i]) for i in order] == [True, False, False]
    assert plan.serials[0] in shell.commands[order[1]]


def test_grub_cfg_is_left_as_the_hardening_deploy_keeps_it(tmp_path: Path) -> None:
    from clonefleet.install.rescue import GRUB_CFG_MODE
    from deploys.hardening import GRUB_CFG_MODE as HARDENED

    shell, _, _ = _install("fsn-1", tmp_path)
    bios = _one(shell.commands, "grub-pc/install_devices")
    assert GRUB_CFG_MODE == HARDENED == "600"
    assert bios.index("update-grub") < bios.index("chmod 600 /boot/grub/grub.cfg")


def test_a_rescue_booted_with_uefi_is_installed_and_logged(tmp_path: Path) -> None:
    shell, _, logged = _install("fsn-1", tmp_path, uefi=True)
    assert any("booted UEFI" in line for line in logged)
    assert any("x86_64-efi" in c for c in shell.commands)
    _, _, logged = _install("fsn-1", tmp_path, uefi=False)
    assert any("booted BIOS" in line for line in logged)


def test_verify_refuses_a_boot_without_efi_modules(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="x86_64-efi"):
        _install("fsn-1", tmp_path, grub_platforms="i386-pc fonts grub.cfg")


def test_release_unmounts_the_esp_before_boot(tmp_path: Path) -> None:
    shell, _, _ = _install("fsn-1", tmp_path)
    release = _one(shell.commands, "cryptsetup close root 2>/dev/null")
    assert release.index("/mnt/clonefleet/boot/efi") < release.index("/mnt/clonefleet/boot ")


def test_fstab_names_the_first_esp_at_boot_efi_but_never_waits_for_it() -> None:
    plan = _plan("fsn-2")
    first = plan.layout.esp_volume_ids[0]
    lines = fstab_text(plan.layout).splitlines()
    esp = next(line for line in lines if " /boot/efi " in line)
    assert esp.startswith(f"UUID={first[:4]}-{first[4:]} /boot/efi vfat ")
    # noauto: nothing at run time reads the ESP, so no boot waits for (or misses) it.
    assert {"noauto", "nofail"} <= set(esp.split()[3].split(","))
    assert esp.split()[5] == "0"  # no fsck pass for a filesystem that is not mounted
    assert [line.split()[1] for line in lines] == ["/", "/boot", "/boot/efi"]


class FakeRescueWithSlots(FakeRescue):
    """Its luksDump lists key slots 0 and 1, as a volume with a recovery slot does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inputs: list[bytes | None] = []

    def run(self, command: str, *, input_data: bytes | None = None, check: bool = True,
            timeout: float = 600, what: str = "") -> tuple[int, str, str]:
        self.inputs.append(input_data)
        if "luksDump" in command and "luksFormat" not in command:
            return 0, (f"Version: 2\nUUID: {self.luks_uuid}\nKeyslots:\n  0: luks2\n"
                       "\tPBKDF:      argon2id\n  1: luks2\n\tPBKDF:      argon2id\n"
                       "Tokens:\n"), ""
        return super().run(command, input_data=input_data, check=check, timeout=timeout,
                           what=what)


def test_recovery_key_goes_to_slot_1_on_stdin_between_format_and_open(tmp_path: Path) -> None:
    plan = _plan("fsn-2")
    shell = FakeRescueWithSlots(plan.serials, luks_uuid=plan.layout.luks_uuid)
    installer = RescueInstaller(cast(RemoteShell, shell), plan, log=lambda line: None)
    image, layer = tmp_path / "rootfs.tar.zst", tmp_path / "layer.tar"
    image.write_bytes(b"x")
    layer.write_bytes(b"x")
    key = "ABCDE-FGHJK-MNPQR-STVWX-YZ012-34567-89ABC-DEFGH"

    installer.install("passphrase", image, layer, recovery_key=key)

    luks = _one(shell.commands, "luksFormat")
    format_at, add_at, open_at = (luks.index(step) for step in (
        "cryptsetup luksFormat", "cryptsetup luksAddKey", "cryptsetup open"))
    assert format_at < add_at < open_at
    add = luks[add_at:].split(";")[0]
    assert "--key-slot 1" in add and "/dev/md/root" in add and '"$d/recovery"' in add
    assert f"--pbkdf-memory {plan.pbkdf_memory_kib}" in luks[format_at:add_at]
    # The recovery slot is added with the volume key, not by unlocking slot 0 again, and
    # costs what luksFormat's benchmark gave slot 0 (no second benchmark).
    assert '--volume-key-file "$d/volume-key"' in add
    assert '--pbkdf-force-iterations "$t" --pbkdf-memory "$m" --pbkdf-parallel "$p"' in add
    assert "--volume-key-file" in luks[open_at:].split(";")[0]
    assert key not in luks and "passphrase\n" not in luks
    assert shell.inputs[shell.commands.index(luks)] == f"passphrase\n{key}\n".encode()


def test_verify_refuses_a_volume_without_the_recovery_slot(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match=r"key slots \[\] are active, expected \[0, 1\]"):
        plan = _plan("fsn-1")
        shell = FakeRescue(plan.serials, luks_uuid=plan.layout.luks_uuid)
        installer = RescueInstaller(cast(RemoteShell, shell), plan, log=lambda line: None)
        (tmp_path / "i").write_bytes(b"x")
        installer.install("passphrase", tmp_path / "i", tmp_path / "i", recovery_key="K-K")


def test_the_files_the_layer_deletes_go_after_it_is_unpacked_and_before_grub(
        tmp_path: Path) -> None:
    shell, _, _ = _install("fsn-1", tmp_path)
    layer = next(i for i, c in enumerate(shell.commands) if c.startswith("set -e; cat |"))
    deletions = next(i for i, c in enumerate(shell.commands)
                     if ".clonefleet-layer-deletions" in c)
    grub = next(i for i, c in enumerate(shell.commands) if "grub-pc/install_devices" in c)
    assert layer < deletions < grub
    assert "xargs -0 -r rm -f --" in shell.commands[deletions]
