"""What an install will do, computed before anything is touched (and shown by --dry-run)."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field

from clonefleet.image.base import APT_PACKAGES, DROPBEAR_PORT, HARDENING_PACKAGES, PACKAGES
from clonefleet.image.node import NodeLayout, kernel_cmdline
from clonefleet.inventory import Fleet, Node
from clonefleet.keyslots import INSTALL_SLOTS
from clonefleet.providers.base import InitramfsNetwork

BOOT_SIZE_MIB = 512
# The EFI system partition holds only GRUB's EFI image (about 4 MiB). 256 MiB is well above
# FAT32's smallest size, which some firmware insists on for an ESP.
ESP_SIZE_MIB = 256
# Partition numbers of the hybrid layout, the same on every disk (BIOS and UEFI alike).
PART_BIOS, PART_ESP, PART_BOOT, PART_ROOT = 1, 2, 3, 4


@dataclass(frozen=True)
class InstallPlan:
    node: str
    serials: tuple[str, ...]
    layout: NodeLayout
    network: InitramfsNetwork
    pbkdf_memory_kib: int
    steps: tuple[str, ...]
    partitions: tuple[str, ...]
    packages: tuple[str, ...] = PACKAGES + APT_PACKAGES + HARDENING_PACKAGES
    disk_paths: dict[str, str] = field(default_factory=dict)  # serial -> /dev/disk/by-id/...

    def describe(self) -> dict[str, object]:
        return {
            "node": self.node,
            "wipe_disks": [self.disk_paths.get(serial, f"serial {serial}")
                           for serial in self.serials],
            "raid1": self.layout.raid,
            "partitions": list(self.partitions),
            "luks": {"type": "luks2", "pbkdf": "argon2id",
                     "pbkdf_memory_kib": self.pbkdf_memory_kib, "uuid": self.layout.luks_uuid,
                     # The recovery key's slot is added right after luksFormat (docs/keys.md).
                     "key_slots": dict(INSTALL_SLOTS)},
            "kernel_cmdline": kernel_cmdline(self.network),
            "dropbear_port": DROPBEAR_PORT,
            "packages": list(self.packages),
            "steps": list(self.steps),
            "boot": "BIOS and UEFI (GRUB i386-pc and x86_64-efi on every disk)",
            "esp_uuids": [f"{v[:4]}-{v[4:]}" for v in self.layout.esp_volume_ids],
        }


def make_plan(fleet: Fleet, node: Node, network: InitramfsNetwork) -> InstallPlan:
    """Given a node, choose its identifiers and lay out its disks."""
    raid = node.raid
    layout = NodeLayout(
        hostname=node.name, domain=fleet.domain, luks_uuid=str(uuid.uuid4()),
        root_fs_uuid=str(uuid.uuid4()), boot_fs_uuid=str(uuid.uuid4()), raid=raid,
        md_root_uuid=_md_uuid() if raid else "", md_boot_uuid=_md_uuid() if raid else "",
        esp_volume_ids=tuple(_vfat_id() for _ in node.disks),
    )
    # One hybrid layout boots under BIOS (GRUB core in p1) and UEFI (GRUB's removable-path
    # EFI image in p2) alike, so the install never depends on how the box boots today.
    if raid:
        partitions = (
            f"p{PART_BIOS} 1 MiB BIOS boot (GRUB core, on every disk)",
            f"p{PART_ESP} {ESP_SIZE_MIB} MiB EFI system partition, vfat (GRUB EFI image "
            "EFI/BOOT/BOOTX64.EFI, on every disk, not mirrored: each disk boots alone)",
            f"p{PART_BOOT} {BOOT_SIZE_MIB} MiB md RAID1 (metadata 1.0) -> ext4 /boot, "
            "unencrypted",
            f"p{PART_ROOT} rest md RAID1 (metadata 1.2) -> LUKS2 argon2id -> ext4 /",
        )
    else:
        partitions = (
            f"p{PART_BIOS} 1 MiB BIOS boot (GRUB core)",
            f"p{PART_ESP} {ESP_SIZE_MIB} MiB EFI system partition, vfat (GRUB EFI image "
            "EFI/BOOT/BOOTX64.EFI)",
            f"p{PART_BOOT} {BOOT_SIZE_MIB} MiB ext4 /boot, unencrypted",
            f"p{PART_ROOT} rest LUKS2 argon2id -> ext4 /",
        )
    # argon2id must fit in RAM at unlock time: a quarter of the node's memory, at most 1 GiB.
    memory = min(1024 * 1024, node.memory_mb * 1024 // 4)
    steps = ("discover disks", "release disks", "partition", *(("raid1",) if raid else ()),
             "luks format", "filesystems", "copy image", "node layer", "bootloader", "verify")
    return InstallPlan(node=node.name, serials=node.disks, layout=layout, network=network,
                       pbkdf_memory_kib=memory, steps=steps, partitions=partitions)


def _vfat_id() -> str:
    """A FAT volume id for `mkfs.vfat -i`: 8 hex digits (blkid shows XXXX-XXXX)."""
    return secrets.token_hex(4).upper()


def _md_uuid() -> str:
    # mdadm wants 32 hex digits in four colon-separated groups
    value = uuid.uuid4().hex
    return ":".join(value[index:index + 8] for index in range(0, 32, 8))
