"""The lab's rescue system: the base image's Debian, trimmed, booted from RAM like a netboot.

Like Hetzner's or OVH's rescue, it runs entirely in memory (an uncompressed initramfs that
systemd boots as the whole system), gets its network by DHCP and accepts only the SSH keys
handed to it at boot (on the kernel command line, as a provider injects them).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clonefleet.errors import InstallError
from clonefleet.image.base import BaseImage, cache_lock
from clonefleet.image.chroot import in_chroot, mounted, run

RESCUE_VERSION = "3"
# The image carries every full-clone service; the rescue system, held in the VM's RAM, needs
# none of them (PostgreSQL with its LLVM alone is ~190 MB). Their files, and those of the
# libraries only they brought into the image, are dropped from the copy (the rescue never
# runs dpkg, so its package database is left as it is).
RESCUE_WITHOUT_PACKAGES = (
    "postgresql-15", "postgresql-client-15", "postgresql-common", "postgresql-client-common",
    "libllvm14", "libz3-4", "libicu72", "locales", "libc-l10n", "libxml2", "libxslt1.1",
    "libpq5", "libboost-program-options1.74.0", "libluajit-5.1-2", "liblua5.3-0",
    "pdns-server", "pdns-backend-sqlite3", "pdns-backend-geoip", "haproxy",
    "prometheus-node-exporter", "wireguard-tools",
)
# Only what a qemu box needs; the rest of the 400 MB of modules would sit in the VM's RAM.
KEEP_MODULES = (
    "kernel/fs/", "kernel/crypto/", "kernel/lib/", "kernel/arch/", "kernel/block/",
    "kernel/drivers/md/", "kernel/drivers/block/", "kernel/drivers/virtio/",
    "kernel/drivers/scsi/", "kernel/drivers/ata/", "kernel/drivers/nvme/",
    "kernel/drivers/char/", "kernel/drivers/net/virtio_net.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/net/core/", "kernel/net/ipv4/", "kernel/net/ipv6/", "kernel/net/packet/",
    "kernel/net/unix/",
)
# What the installer runs in a rescue system (clonefleet/install/rescue.py); the lab's rescue
# is the node image, so a package missing there fails here, not halfway through an install.
INSTALL_TOOLS = ("sgdisk", "mkfs.vfat", "mkfs.ext4", "wipefs", "mdadm", "cryptsetup",
                 "udevadm", "lsblk", "zstd", "tar")
KEYS_SCRIPT = """#!/bin/sh
# Install the SSH keys the provider passed on the kernel command line, and fresh host keys.
set -e
ssh-keygen -A
mkdir -p -m 700 /root/.ssh
for word in $(cat /proc/cmdline); do
    case "$word" in
        clonefleet.ssh_keys=*)
            echo "${word#clonefleet.ssh_keys=}" | base64 -d > /root/.ssh/authorized_keys ;;
    esac
done
chmod 600 /root/.ssh/authorized_keys 2>/dev/null || true
"""
KEYS_UNIT = """[Unit]
Description=clonefleet rescue: SSH keys from the kernel command line
Before=ssh.service
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/clonefleet-rescue-keys
[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class RescueSystem:
    kernel: Path
    initrd: Path


def ensure_rescue(base: BaseImage, log: Callable[[str], None] = print) -> RescueSystem:
    """Given the base image, build (once) and return the rescue kernel and initramfs."""
    directory = base.directory / f"rescue-{RESCUE_VERSION}"
    kernel, initrd = directory / "vmlinuz", directory / "rescue.cpio"
    with cache_lock(base.directory / ".rescue.lock"):
        if not (directory / "rescue.json").exists():
            _build(base, directory, log)
    return RescueSystem(kernel=kernel, initrd=initrd)


def _build(base: BaseImage, directory: Path, log: Callable[[str], None]) -> None:
    log("rescue: building the lab rescue system (once)")
    shutil.rmtree(directory, ignore_errors=True)
    root = directory / "root"
    directory.mkdir(parents=True)
    run(["cp", "-a", "--reflink=auto", f"{base.root}/.", str(root)], what="copy rootfs")
    missing = missing_tools(root)
    if missing:
        raise InstallError(f"the lab rescue system would lack {', '.join(missing)}, which the "
                           "installer runs; add their packages to PACKAGES in "
                           "clonefleet/image/base.py")
    shutil.copy2(base.vmlinuz, directory / "vmlinuz")
    _prune_modules(root, base.kernel_version)
    _drop_packages(root, RESCUE_WITHOUT_PACKAGES)
    for path in (root / "boot").iterdir():
        if path.is_file():
            path.unlink()
    (root / "etc/hostname").write_text("rescue\n")
    (root / "etc/clonefleet-rescue").write_text("lab rescue system\n")
    (root / "etc/fstab").write_text("# rescue system runs from RAM\n")
    (root / "etc/network/interfaces").write_text(
        "auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet dhcp\n")
    script = root / "usr/local/sbin/clonefleet-rescue-keys"
    script.write_text(KEYS_SCRIPT)
    script.chmod(0o755)
    (root / "etc/systemd/system/clonefleet-rescue-keys.service").write_text(KEYS_UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "clonefleet-rescue-keys.service").symlink_to(
        "/etc/systemd/system/clonefleet-rescue-keys.service")
    journald = root / "etc/systemd/journald.conf.d"
    journald.mkdir(parents=True, exist_ok=True)
    (journald / "volatile.conf").write_text("[Journal]\nStorage=volatile\n")
    # Nothing in RAM should wait for devices that a blank box does not have.
    for unit in ("apt-daily.timer", "apt-daily-upgrade.timer", "chrony.service",
                 "smartmontools.service", "unattended-upgrades.service", "e2scrub_reap.service"):
        (root / "etc/systemd/system" / unit).unlink(missing_ok=True)
        (root / "etc/systemd/system" / unit).symlink_to("/dev/null")
    (root / "init").symlink_to("/lib/systemd/systemd")
    with mounted(root):
        in_chroot(root, f"depmod -a {base.kernel_version}", what="depmod")
    log("rescue: packing initramfs")
    with open(directory / "rescue.cpio", "wb") as out:
        files = subprocess.run(["find", ".", "-xdev", "-print0"], cwd=root, check=True,
                               capture_output=True).stdout
        result = subprocess.run(["cpio", "--null", "-o", "-H", "newc", "--quiet"], cwd=root,
                                input=files, stdout=out, stderr=subprocess.PIPE)
        if result.returncode != 0:
            raise InstallError(f"packing the rescue initramfs failed: {result.stderr.decode()}")
    shutil.rmtree(root)
    size = (directory / "rescue.cpio").stat().st_size
    (directory / "rescue.json").write_text(json.dumps({"size": size}))


def _drop_packages(root: Path, packages: tuple[str, ...]) -> None:
    """Delete the regular files dpkg lists for `packages` (missing packages are skipped)."""
    info = root / "var/lib/dpkg/info"
    for package in packages:
        for listing in (info / f"{package}.list", info / f"{package}:amd64.list"):
            if not listing.exists():
                continue
            for line in listing.read_text().splitlines():
                path = root / line.lstrip("/")
                if path.is_file() and not path.is_symlink():
                    path.unlink()


def missing_tools(root: Path) -> list[str]:
    """The INSTALL_TOOLS that the root filesystem at `root` does not have."""
    folders = ("usr/sbin", "usr/bin", "sbin", "bin")
    return [tool for tool in INSTALL_TOOLS
            if not any((root / folder / tool).exists() for folder in folders)]


def _prune_modules(root: Path, kernel_version: str) -> None:
    modules = root / "usr/lib/modules" / kernel_version
    for path in sorted(modules.rglob("*.ko*")):
        relative = path.relative_to(modules).as_posix()
        if not relative.startswith(KEEP_MODULES):
            path.unlink()
