"""Build the cached Debian 12 root filesystem every node is a clone of.

The slow work (debootstrap, package configuration) happens once on the controller; nodes
get a compressed tarball of it plus a small per-node layer (see `clonefleet.image.node`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from clonefleet.errors import InstallError
from clonefleet.image.chroot import in_chroot, mounted, run

SUITE = "bookworm"
# Everything a full-clone node runs is in the image, so deploys find it installed and the
# slow in-VM apt work never happens under emulation.
PACKAGES = (
    "linux-image-amd64", "systemd-sysv", "openssh-server", "cryptsetup", "cryptsetup-initramfs",
    "dropbear-initramfs", "ifupdown", "isc-dhcp-client", "python3", "mdadm", "grub-pc", "zstd",
    "gdisk", "e2fsprogs", "nftables", "chrony", "unattended-upgrades", "smartmontools", "sudo",
    "iproute2", "procps", "kmod", "udev", "apt-utils", "needrestart", "less", "netbase",
    # UEFI beside BIOS: GRUB's x86_64-efi modules (only the -bin package: grub-efi-amd64
    # conflicts with grub-pc) and mkfs.vfat for the ESPs (the lab rescue, built from this
    # image, needs it too). No efibootmgr: GRUB goes to the removable path, not NVRAM.
    "grub-efi-amd64-bin", "dosfstools",
)
# Installed with apt after debootstrap: debootstrap's own resolver ignores virtual packages
# (apprise → python3-cryptography → python3-cffi-backend-api-min failed to configure).
APT_PACKAGES = (
    # the smartwatch agent runs on Debian's python3 with Debian's apprise
    "apprise", "python3-chardet", "python3-humanfriendly",
    # the full clone's services (dns, transport, database, mesh, metrics); apt, with the
    # packaged services kept from starting (see FULL_CLONE_UNITS)
    "pdns-server", "pdns-backend-sqlite3", "pdns-backend-geoip", "haproxy", "postgresql",
    "wireguard-tools", "prometheus-node-exporter",
    # an unlocker (deploys/unlocker.py, on the nodes the fleet file names) runs on Debian's
    # python3 with these: every node has them, so any node can become one without apt
    "python3-click", "python3-rich", "python3-requests", "python3-cryptography",
    "python3-bcrypt", "python3-nacl",
    "python3-futurist", "python3-pbr",
)
# The packages above enable their services on install. The image ships them disabled: each
# service's deploy enables what it has configured, and an emulated lab VM must not spend its
# first boot starting an unconfigured PostgreSQL or a PowerDNS with no backend.
FULL_CLONE_UNITS = (
    "pdns.service", "haproxy.service", "postgresql.service",
    "prometheus-node-exporter.service",
)
# What deploys/hardening.py configures (see docs/hardening.md), installed with APT_PACKAGES.
# Kept apart from the service packages so lists edited in parallel merge cleanly. auditd and
# acct enable their units on install and stay enabled (not in FULL_CLONE_UNITS): the
# hardening deploy wants both running from the first boot.
HARDENING_PACKAGES = (
    "auditd",  # kernel audit trail of identity, privilege and module changes
    "libpam-tmpdir",  # per-user $TMPDIR: no symlink races in a shared /tmp
    "libpam-passwdqc",  # refuses weak passwords should an account ever get one
    "apt-listchanges",  # upgrade notes (NEWS) shown with every apt run
    "debsums",  # checks installed files against the packages' checksums
    "acct",  # process accounting: which commands ran, for incident review
)
# postgresql-common creates a cluster "main" when a PostgreSQL version is installed; the
# database deploy creates its own cluster with its own settings, so the image has none (and
# later major versions create none either: create_main_cluster = false).
POSTGRESQL_VERSION = "15"
# Modules the initramfs must carry whatever the build host sees (it cannot probe the node).
INITRAMFS_MODULES = (
    "dm-crypt", "xts", "aesni-intel", "virtio_pci", "virtio_blk", "virtio_net", "virtio_scsi",
    "raid1", "md_mod", "e1000e", "igb", "ixgbe", "r8169", "ext4",
)
DROPBEAR_PORT = 2222
# systemd runs every generator at each boot before it loads a single unit, and gives them
# 90 s in all: an emulated node starved of CPU spent 3 minutes there, and a boot whose fstab
# generator was cut off left the root read-only and /boot unmounted. These answer questions
# a server never asks (GPT auto-discovery, hibernation, dm-integrity/verity, offline
# updates, rc.local, systemd.run=); fstab, cryptsetup, getty, sysv and debug (for
# systemd.mask= in an emergency) stay.
MASKED_GENERATORS = (
    "systemd-gpt-auto-generator", "systemd-hibernate-resume-generator",
    "systemd-integritysetup-generator", "systemd-veritysetup-generator",
    "systemd-system-update-generator", "systemd-rc-local-generator", "systemd-run-generator",
)
BUILD_VERSION = "9"  # bump when the configuration below changes
LAST_USED = "last-used"  # touched whenever the image is handed out
UNUSED_IMAGE_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class BaseImage:
    root: Path  # the unpacked root filesystem (overlay lower layer for node builds)
    tarball: Path  # rootfs.tar.zst streamed to the rescue system
    kernel_version: str
    directory: Path

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.kernel_version}"


def mirror() -> str:
    return os.environ.get("CLONEFLEET_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def security_mirror() -> str:
    return os.environ.get("CLONEFLEET_DEBIAN_SECURITY_MIRROR",
                          "http://deb.debian.org/debian-security")


# Kept by the image build and by deploys/hardening.py alike (nodes of older images lack it).
SECURITY_SOURCES = "/etc/apt/sources.list.d/debian-security.list"


def security_sources(mirror: str) -> str:
    """The apt source of Debian's security suite, as the image and the hardening deploy
    write it (the same text, so a fresh node's first deploy leaves it alone)."""
    return ("# Managed by clonefleet: Debian's security updates, which unattended-upgrades\n"
            "# installs; without this line it has none to install.\n"
            f"deb {mirror} {SUITE}-security main\n")


def image_key() -> str:
    text = json.dumps([SUITE, PACKAGES, APT_PACKAGES, HARDENING_PACKAGES, FULL_CLONE_UNITS,
                       INITRAMFS_MODULES, DROPBEAR_PORT, BUILD_VERSION])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@contextmanager
def cache_lock(path: Path) -> Iterator[None]:
    """One builder at a time across processes (parallel tests share the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_base_image(cache: Path, log: Callable[[str], None] = print) -> BaseImage:
    """Given the cache folder, build the base image if missing, return it."""
    directory = cache / "images" / f"debian-{SUITE}-{image_key()}"
    meta_path = directory / "image.json"
    with cache_lock(cache / "images" / ".lock"):
        if not meta_path.exists():
            _build(directory, log)
            _prune_old_images(directory, log)
        meta = json.loads(meta_path.read_text())
        (directory / LAST_USED).touch()
    return BaseImage(root=directory / "rootfs", tarball=directory / "rootfs.tar.zst",
                     kernel_version=meta["kernel_version"], directory=directory)


def _prune_old_images(current: Path, log: Callable[[str], None]) -> None:
    """Reclaim the ~1.3 GB of images of earlier configurations once nothing uses them.

    A lab fleet or benchmark started on the previous image keeps using its folder (rescue
    kernel, rootfs) after a newer image is built, so only images unused for a week go.
    """
    cutoff = time.time() - UNUSED_IMAGE_SECONDS
    for other in current.parent.glob(f"debian-{SUITE}-*"):
        if other != current and other.is_dir() and _last_used(other) < cutoff:
            log(f"image: removing outdated {other.name}")
            shutil.rmtree(other, ignore_errors=True)


def _last_used(directory: Path) -> float:
    for name in (LAST_USED, "image.json"):
        try:
            return (directory / name).stat().st_mtime
        except FileNotFoundError:
            continue
    return directory.stat().st_mtime


def _build(directory: Path, log: Callable[[str], None]) -> None:
    if os.geteuid() != 0:
        raise InstallError("building the node image needs root (debootstrap, chroot); "
                           "run as root or use a prebuilt cache (CLONEFLEET_CACHE_DIR)")
    if shutil.which("debootstrap") is None:
        raise InstallError("debootstrap is not installed; run scripts/setup first")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    root = directory / "rootfs"
    started = time.monotonic()
    log(f"image: debootstrap {SUITE} from {mirror()} (about 2 minutes, once)")
    run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
         str(root), mirror()], what="debootstrap", timeout=3600)
    log("image: configuring")
    _configure(root)
    kernels = sorted(path.name.removeprefix("vmlinuz-") for path in (root / "boot").glob(
        "vmlinuz-*"))
    if len(kernels) != 1:
        raise InstallError(f"image has {len(kernels)} kernels, expected one: {kernels}")
    log("image: packing rootfs.tar.zst")
    run(["tar", "-C", str(root), "--numeric-owner", "--xattrs", "--xattrs-include=*",
         "-I", "zstd -T0 -3", "-cf", str(directory / "rootfs.tar.zst"), "."],
        what="pack rootfs", timeout=1800)
    (directory / "image.json").write_text(json.dumps(
        {"kernel_version": kernels[0], "suite": SUITE, "packages": PACKAGES,
         "built": time.time(), "seconds": round(time.monotonic() - started, 1)}))
    log(f"image: built in {time.monotonic() - started:.0f} s")


def _configure(root: Path) -> None:
    """Settings shared by every node; anything per-node is written by the node layer."""
    modules = root / "etc/initramfs-tools/modules"
    modules.write_text(modules.read_text() + "\n".join(INITRAMFS_MODULES) + "\n")
    conf_hook = root / "etc/cryptsetup-initramfs/conf-hook"
    conf_hook.write_text(conf_hook.read_text() + "\nCRYPTSETUP=y\n")
    (root / "etc/dropbear/initramfs/dropbear.conf").write_text(
        "# clonefleet: unlock-only Dropbear: no passwords, no forwarding, idle timeout; its\n"
        "# log on the console (-E: the initramfs has no syslog), so the console shows each\n"
        "# login and the key that made it: who unlocked this boot\n"
        f'DROPBEAR_OPTIONS="-p {DROPBEAR_PORT} -s -j -k -I 120 -E"\n'
    )
    grub_d = root / "etc/default/grub.d"
    grub_d.mkdir(parents=True, exist_ok=True)
    (grub_d / "00-clonefleet-console.cfg").write_text(
        'GRUB_TIMEOUT=1\nGRUB_TERMINAL="console serial"\n'
        'GRUB_SERIAL_COMMAND="serial --speed=115200"\n'
        'GRUB_CMDLINE_LINUX_DEFAULT=""\n'
    )
    generators = root / "etc/systemd/system-generators"
    generators.mkdir(parents=True, exist_ok=True)
    for name in MASKED_GENERATORS:
        link = generators / name
        if not link.is_symlink():
            link.symlink_to("/dev/null")
    (root / "etc/needrestart/conf.d").mkdir(parents=True, exist_ok=True)
    # needrestart must never prompt: rollouts and unattended upgrades run without a TTY.
    (root / "etc/needrestart/conf.d/50-clonefleet.conf").write_text("$nrconf{restart} = 'l';\n")
    # No package may start a service inside the build chroot: without a running systemd,
    # invoke-rc.d would run the SysV scripts, i.e. a PostgreSQL or PowerDNS on the build host.
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# clonefleet image build: start nothing\nexit 101\n")
    policy.chmod(0o755)
    createcluster = root / "etc/postgresql-common/createcluster.d"
    createcluster.mkdir(parents=True, exist_ok=True)
    (createcluster / "50-clonefleet.conf").write_text(
        "# clonefleet: the database deploy creates its own cluster\n"
        "create_main_cluster = false\n")
    # debootstrap only knows the point release: without the security suite a fresh node runs
    # every fix published since, and unattended-upgrades has no security update to install.
    # `upgrade`, not `dist-upgrade`: a new kernel ABI never adds a second kernel to the image.
    (root / SECURITY_SOURCES.lstrip("/")).write_text(security_sources(security_mirror()))
    try:
        with mounted(root):
            in_chroot(root, "apt-get update -q && apt-get upgrade -y -q && "
                      "apt-get install -y -q "
                      "--no-install-recommends " + " ".join(APT_PACKAGES + HARDENING_PACKAGES),
                      what="apt-get install", timeout=1800)
            in_chroot(root, "apt-get clean", what="apt-get clean")
            in_chroot(root, f"if pg_lsclusters -h | grep -q '^{POSTGRESQL_VERSION} main '; "
                      f"then pg_dropcluster {POSTGRESQL_VERSION} main; fi",
                      what="drop the default PostgreSQL cluster")
            in_chroot(root, "systemctl disable " + " ".join(FULL_CLONE_UNITS),
                      what="disable the full-clone services")
    finally:
        policy.unlink()
    # Per-node secrets and identities must never be cloned.
    for pattern in ("etc/ssh/ssh_host_*", "etc/dropbear/initramfs/dropbear_*_host_key",
                    "etc/dropbear/dropbear_*_host_key", "boot/initrd.img-*"):
        for path in root.glob(pattern):
            path.unlink()
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.exists() or dbus_id.is_symlink():
        dbus_id.unlink()
    for folder in ("var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale"):
        path = root / folder
        if path.is_dir():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                elif child.name != "lock":
                    child.unlink()
    (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
    (root / "etc/clonefleet-image").write_text(f"{SUITE} {image_key()}\n")
