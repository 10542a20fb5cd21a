"""The install steps, run over SSH in a rescue system.

Only what must touch the disks runs here: partitioning, RAID, luksFormat, mkfs with UUIDs
chosen up front, unpacking the cached image and the node layer, and GRUB. The passphrase
travels on stdin only; nothing of it is written to the node's disk or printed.

Every disk gets the same hybrid layout (see `clonefleet.install.plan`) and GRUB for both
BIOS (`i386-pc`, core image in the BIOS boot partition) and UEFI (`x86_64-efi` on the
disk's own EFI system partition, at the removable-media path), so a node boots whichever
way its firmware is set, and from any one of its disks.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from clonefleet.errors import InstallError
from clonefleet.image.node import delete_listed_command
from clonefleet.install.disks import FoundDisk, match_disks
from clonefleet.install.plan import (
    BOOT_SIZE_MIB,
    ESP_SIZE_MIB,
    PART_BIOS,
    PART_BOOT,
    PART_ESP,
    PART_ROOT,
    InstallPlan,
)
from clonefleet.keyslots import INSTALL_SLOTS, Pbkdf, active_slots, format_command
from clonefleet.ssh import RemoteShell

Step = Callable[[str], None]

# grub.cfg names the kernel command line and the disks: root only, as the hardening deploy
# keeps it (deploys/hardening.py; update-grub itself leaves it readable by everyone), so the
# node's first deploy finds nothing to change there.
GRUB_CFG_MODE = "600"
TARGET = "/mnt/clonefleet"
ESP_MOUNT = "/boot/efi"  # inside the target
# The path UEFI firmware boots from a disk with no boot entry in its NVRAM (a replaced disk,
# a moved box, a wiped NVRAM); `grub-install --removable` writes exactly this.
EFI_REMOVABLE_PATH = "EFI/BOOT/BOOTX64.EFI"


class RescueInstaller:
    """Given a shell in the rescue system and a plan, install the node step by step."""

    def __init__(self, shell: RemoteShell, plan: InstallPlan,
                 on_step: Callable[[str, float], None] | None = None,
                 log: Callable[[str], None] = print) -> None:
        self.shell = shell
        self.plan = plan
        self.on_step = on_step or (lambda step, seconds: None)
        self.log = log
        self.disks: list[FoundDisk] = []
        self.firmware = ""  # "uefi" or "bios": how the rescue system booted
        self.recovery_key: str | None = None

    def sh(self, command: str, *, what: str, input_data: bytes | None = None,
           timeout: float = 600) -> str:
        return self.shell.run(f"set -e; {command}", input_data=input_data, what=what,
                              timeout=timeout)[1]

    def _timed(self, step: str, function: Callable[[], None]) -> None:
        started = time.monotonic()
        self.log(f"install: {step}")
        function()
        self.on_step(step, time.monotonic() - started)

    def discover(self) -> InstallPlan:
        """Match the inventory's serials to disks; returns the plan with their by-id paths."""
        self.sh("test -e /etc/clonefleet-rescue || grep -qi rescue /etc/hostname",
                what="rescue system check")
        # Either is fine: the disks get GRUB for both. Recorded because it says how the box
        # will boot the installed system (the firmware's setting outlives the rescue).
        uefi = self.shell.run("test -d /sys/firmware/efi", check=False)[0] == 0
        self.firmware = "uefi" if uefi else "bios"
        self.log(f"install: {self.plan.node}: the rescue system booted "
                 f"{'UEFI' if uefi else 'BIOS (legacy)'}; installing GRUB for BIOS and UEFI")
        self.sh("udevadm settle || true", what="udev settle")
        lsblk = self.sh("lsblk -J -d -o NAME,SERIAL,SIZE,TYPE,MODEL", what="lsblk")
        listing = self.sh("cd /dev/disk/by-id && for l in *; do printf '%s=%s\\n' \"$l\" "
                          "\"$(readlink -f \"$l\")\"; done", what="list /dev/disk/by-id")
        self.disks = match_disks(self.plan.serials, lsblk, listing, self.plan.node)
        self.plan = replace(self.plan, disk_paths={d.serial: d.by_id for d in self.disks})
        return self.plan

    def install(self, passphrase: str, image_tarball: Path, node_layer: Path,
                progress: Callable[[int, int], None] | None = None,
                recovery_key: str | None = None) -> None:
        """`recovery_key`: the offline key for the volume's second slot (None: one slot)."""
        self.recovery_key = recovery_key
        if not self.disks:
            self.discover()
        self._timed("release disks", self._release)
        self._timed("partition", self._partition)
        if self.plan.layout.raid:
            self._timed("raid1", self._raid)
        self._timed("luks format", lambda: self._luks(passphrase, recovery_key))
        self._timed("filesystems", self._filesystems)
        self._timed("copy image", lambda: self._copy(image_tarball, "zstd -dc", progress))
        self._timed("node layer", lambda: self._node_layer(node_layer))
        self._timed("bootloader", self._bootloader)
        self._timed("verify", self._verify_and_close)

    def _part(self, disk: FoundDisk, number: int) -> str:
        return f"{disk.by_id}-part{number}"

    def _release(self) -> None:
        """Make a re-run after a crash possible: undo mounts, mappings and arrays we made."""
        disks = " ".join(shlex.quote(d.by_id) for d in self.disks)
        self.sh(
            f"for m in {TARGET}/dev {TARGET}/proc {TARGET}/sys {TARGET}/run "
            f"{TARGET}{ESP_MOUNT} {TARGET}/boot {TARGET}; do umount -l $m 2>/dev/null "
            "|| true; done; "
            "cryptsetup close root 2>/dev/null || true; "
            "for md in /dev/md/* /dev/md[0-9]*; do [ -e \"$md\" ] && "
            "mdadm --stop \"$md\" 2>/dev/null || true; done; "
            f"for d in {disks}; do for p in \"$d\"-part*; do [ -e \"$p\" ] && "
            "{ mdadm --zero-superblock \"$p\" 2>/dev/null || true; wipefs -qa \"$p\"; }; done; "
            "wipefs -qa \"$d\"; done",
            what="release disks")

    def _partition(self) -> None:
        raid = self.plan.layout.raid
        for disk in self.disks:
            boot_type, root_type = ("fd00", "fd00") if raid else ("8300", "8309")
            self.sh(
                f"sgdisk --zap-all {shlex.quote(disk.by_id)} >/dev/null; "
                f"sgdisk -n{PART_BIOS}:0:+1M -t{PART_BIOS}:ef02 -c{PART_BIOS}:cf-bios "
                f"-n{PART_ESP}:0:+{ESP_SIZE_MIB}M -t{PART_ESP}:ef00 -c{PART_ESP}:cf-esp "
                f"-n{PART_BOOT}:0:+{BOOT_SIZE_MIB}M -t{PART_BOOT}:{boot_type} "
                f"-c{PART_BOOT}:cf-boot "
                f"-n{PART_ROOT}:0:0 -t{PART_ROOT}:{root_type} -c{PART_ROOT}:cf-root "
                f"{shlex.quote(disk.by_id)} >/dev/null; "
                f"partprobe {shlex.quote(disk.by_id)} 2>/dev/null || true; udevadm settle; "
                f"test -e {shlex.quote(self._part(disk, PART_ROOT))}",
                what=f"partition {disk.by_id}")

    def _raid(self) -> None:
        layout = self.plan.layout
        boots = " ".join(self._part(d, PART_BOOT) for d in self.disks)
        roots = " ".join(self._part(d, PART_ROOT) for d in self.disks)
        count = len(self.disks)
        # Blank lab disks are already identical, so skip the initial resync there; real disks
        # resync in the background while we install.
        clean = "--assume-clean" if all(d.serial.startswith("CFLAB-") for d in self.disks) \
            else ""
        self.sh(
            f"mdadm --create /dev/md/boot --run --level=1 --raid-devices={count} "
            f"--metadata=1.0 --homehost=any --uuid={layout.md_boot_uuid} {clean} {boots}; "
            f"mdadm --create /dev/md/root --run --level=1 --raid-devices={count} "
            f"--metadata=1.2 --homehost=any --uuid={layout.md_root_uuid} {clean} {roots}; "
            "udevadm settle",
            what="mdadm --create")

    def _devices(self) -> tuple[str, str]:
        if self.plan.layout.raid:
            return "/dev/md/boot", "/dev/md/root"
        disk = self.disks[0]
        return self._part(disk, PART_BOOT), self._part(disk, PART_ROOT)

    def _luks(self, passphrase: str, recovery_key: str | None = None) -> None:
        """Slot 0 holds the escrowed passphrase, slot 1 (when given) the offline recovery key;
        then the volume is mapped as `root`. One command (`clonefleet.keyslots`): both
        secrets on stdin into files on the rescue system's tmpfs, removed when it ends."""
        _, root = self._devices()
        command, stdin = format_command(root, Pbkdf(self.plan.pbkdf_memory_kib),
                                        self.plan.layout.luks_uuid, "cf-root", passphrase,
                                        recovery_key, open_as="root")
        self.sh(command, input_data=stdin, what="cryptsetup luksFormat, luksAddKey and open")

    def _filesystems(self) -> None:
        boot, _ = self._devices()
        layout = self.plan.layout
        if len(layout.esp_volume_ids) != len(self.disks):
            raise InstallError(f"node {self.plan.node}: the plan has "
                               f"{len(layout.esp_volume_ids)} ESP volume ids for "
                               f"{len(self.disks)} disks")
        # One FAT32 ESP per disk, each with its own volume id chosen up front (fstab names
        # the first). Not mirrored: firmware reads the partition itself, not an md array.
        esps = "; ".join(
            f"mkfs.vfat -F 32 -n ESP -i {volume_id} {shlex.quote(self._part(disk, PART_ESP))}"
            " >/dev/null" for disk, volume_id in zip(self.disks, layout.esp_volume_ids,
                                                     strict=True))
        self.sh(
            f"{esps}; "
            f"mkfs.ext4 -q -F -U {layout.boot_fs_uuid} -L boot {boot}; "
            f"mkfs.ext4 -q -F -U {layout.root_fs_uuid} -L root /dev/mapper/root; "
            f"mkdir -p {TARGET}; mount /dev/mapper/root {TARGET}; "
            f"mkdir -p {TARGET}/boot; mount {boot} {TARGET}/boot; "
            f"mkdir -p {TARGET}{ESP_MOUNT}",
            what="mkfs and mount")

    def _copy(self, source: Path, decompress: str,
              progress: Callable[[int, int], None] | None) -> None:
        total = source.stat().st_size
        with open(source, "rb") as handle:
            self.shell.stream(
                f"set -e; {decompress} | tar -xpf - -C {TARGET} --numeric-owner --xattrs "
                "--xattrs-include='*'",
                handle, progress=(lambda sent: progress(sent, total)) if progress else None,
                what=f"unpack {source.name}")

    def _node_layer(self, layer: Path) -> None:
        """Unpack the node layer over the image, then delete the image's files it deletes
        (`clonefleet.image.node.DELETIONS`)."""
        self._copy(layer, "cat", None)
        self.sh(delete_listed_command(TARGET), what="delete the files the node layer deletes")

    def _bootloader(self) -> None:
        devices = ", ".join(d.by_id for d in self.disks)
        installs = "; ".join(f"grub-install --target=i386-pc {shlex.quote(d.by_id)}"
                             for d in self.disks)
        self.sh(
            f"for d in dev proc sys run; do mkdir -p {TARGET}/$d; done; "
            f"mount --bind /dev {TARGET}/dev; mount -t proc proc {TARGET}/proc; "
            f"mount -t sysfs sys {TARGET}/sys; mount -t tmpfs tmpfs {TARGET}/run; "
            f"chroot {TARGET} /bin/sh -c "
            + shlex.quote(
                "set -e; export DEBIAN_FRONTEND=noninteractive; "
                f"echo 'grub-pc grub-pc/install_devices multiselect {devices}' "
                "| debconf-set-selections; "
                f"{installs}; update-grub; chmod {GRUB_CFG_MODE} /boot/grub/grub.cfg"),
            what="grub-install (BIOS)", timeout=900)
        for disk in self.disks:
            self._efi_bootloader(disk)

    def _efi_bootloader(self, disk: FoundDisk) -> None:
        """GRUB's EFI image on this disk's own ESP, mounted at /boot/efi for the install.

        --removable writes EFI/BOOT/BOOTX64.EFI, which firmware boots with no NVRAM entry,
        and --no-nvram leaves the NVRAM alone (the rescue system may have booted BIOS, and
        a disk moved to another box has no entry there anyway). --no-uefi-secure-boot (a
        Debian option): always GRUB's own core image, never a shim path, even if a signed
        GRUB package ever lands in the image. The image reads its modules and grub.cfg from
        /boot/grub, which update-grub wrote once for both platforms.
        """
        esp = shlex.quote(self._part(disk, PART_ESP))
        target_esp = f"{TARGET}{ESP_MOUNT}"
        self.sh(
            f"mount -t vfat {esp} {target_esp}; "
            f"chroot {TARGET} grub-install --target=x86_64-efi --efi-directory={ESP_MOUNT} "
            "--boot-directory=/boot --removable --no-nvram --bootloader-id=debian "
            "--no-uefi-secure-boot; "
            f"test -s {target_esp}/{EFI_REMOVABLE_PATH} || "
            f"{{ echo 'no {EFI_REMOVABLE_PATH} on the ESP' >&2; exit 1; }}; "
            f"sync; umount {target_esp}",
            what=f"grub-install (UEFI) on {disk.by_id}", timeout=600)

    def _verify_and_close(self) -> None:
        _, root = self._devices()
        dump = self.sh(f"cryptsetup luksDump {root}", what="luksDump")
        if "argon2id" not in dump or self.plan.layout.luks_uuid not in dump:
            raise InstallError("LUKS header check failed: expected argon2id and the planned "
                               "UUID")
        expected = sorted(INSTALL_SLOTS.values())
        if self.recovery_key is not None and active_slots(dump) != expected:
            raise InstallError(f"LUKS header check failed: key slots {active_slots(dump)} "
                               f"are active, expected {expected} (escrow and recovery)")
        kernel_files = self.sh(f"ls {TARGET}/boot", what="list /boot")
        if "initrd.img-" not in kernel_files or "grub" not in kernel_files:
            raise InstallError(f"/boot is incomplete on the node: {kernel_files.split()}")
        platforms = self.sh(f"ls {TARGET}/boot/grub", what="list /boot/grub").split()
        missing = [name for name in ("i386-pc", "x86_64-efi") if name not in platforms]
        if missing:
            raise InstallError(f"/boot/grub on the node lacks GRUB modules for "
                               f"{', '.join(missing)}: it would not boot that way")
        self.sh(
            f"sync; for m in dev proc sys run boot; do umount {TARGET}/$m; done; "
            f"umount {TARGET}; cryptsetup close root; "
            + ("mdadm --stop /dev/md/root /dev/md/boot; " if self.plan.layout.raid else "")
            + "sync", what="unmount and close")
