"""The per-node layer on top of the base image, built on the controller.

An overlayfs over the cached root filesystem collects exactly what differs for one node:
hostname, fstab/crypttab with UUIDs chosen up front, network, its own host keys for sshd and
Dropbear, authorized keys, and an initramfs built by Debian's own `update-initramfs` with
all of that inside. The upper layer is packed as a small tar that the rescue system unpacks
over the base tarball. The initramfs is checked before the node ever reboots into it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clonefleet.errors import InstallError
from clonefleet.image.base import DROPBEAR_PORT, BaseImage
from clonefleet.image.chroot import in_chroot, mounted, overlay
from clonefleet.providers.base import InitramfsNetwork

# The initramfs authorized_keys may only unlock: no shell, no forwarding.
UNLOCK_ONLY = ('no-port-forwarding,no-agent-forwarding,no-X11-forwarding,no-pty,'
               'command="/bin/cryptroot-unlock"')


# Rebuild a booted node's initramfs (its Dropbear keys changed), flushed before anything
# relies on it: update-initramfs leaves the new image in the page cache, and a power cut
# right after a host-key rotation booted the old one (lab fleet test).
REBUILD_INITRAMFS = "update-initramfs -u -k all && sync"


def initramfs_authorized_keys(keys: tuple[str, ...] | list[str]) -> str:
    """Dropbear's initramfs authorized_keys: each key may run cryptroot-unlock, nothing else.
    The node layer writes it at install, the base deploy (`clonefleet_unlock_keys`) after a
    grant or revoke: one function, so the same keys give the same file."""
    return "".join(f"{UNLOCK_ONLY} {key}\n" for key in keys)


@dataclass(frozen=True)
class NodeLayout:
    """Identifiers chosen on the controller before anything is written to the node."""

    hostname: str
    domain: str
    luks_uuid: str
    root_fs_uuid: str
    boot_fs_uuid: str
    raid: bool
    md_root_uuid: str = ""  # mdadm --uuid for the RAID1 under LUKS
    md_boot_uuid: str = ""
    # vfat volume ids (8 hex digits, `mkfs.vfat -i`) of each disk's EFI system partition,
    # in the order of the node's disks. Each disk has its own ESP (firmware reads FAT, not
    # md), so each disk boots alone; fstab mounts the first one at /boot/efi.
    esp_volume_ids: tuple[str, ...] = ()

    @property
    def esp_uuid(self) -> str:
        """The first ESP as blkid and fstab name it: `UUID=XXXX-XXXX`."""
        first = self.esp_volume_ids[0].upper()
        return f"{first[:4]}-{first[4:]}"


@dataclass(frozen=True)
class NodeSecrets:
    ssh_host_key: str  # OpenSSH private key (ed25519)
    ssh_host_public: str
    dropbear_host_key: str  # OpenSSH private key, converted to Dropbear's format in the chroot
    dropbear_host_public: str


@dataclass(frozen=True)
class NodeLayerInput:
    layout: NodeLayout
    secrets: NodeSecrets
    network: InitramfsNetwork
    operator_keys: tuple[str, ...]
    nic_modules: tuple[str, ...]
    # Granted unlockers' keys (`clonefleet keys grant`): Dropbear only, never root's sshd.
    unlock_keys: tuple[str, ...] = ()


def build_node_layer(base: BaseImage, spec: NodeLayerInput, output: Path,
                     workspace: Path, bake: Callable[[Path], None] | None = None) -> list[str]:
    """Write `output` (a tar of the node's files); return the initramfs file list checked.

    `bake(root)`, when given, runs on the layer's root filesystem after the node's own files
    are written and before its initramfs is built (`clonefleet.image.bake`). Private host
    keys exist only inside `workspace`, which is removed before returning.
    """
    workdir = Path(tempfile.mkdtemp(prefix=f"{spec.layout.hostname}-", dir=workspace))
    try:
        with overlay(base.root, workdir) as (merged, upper), mounted(merged):
            _write_files(merged, spec)
            in_chroot(merged, "dropbearconvert openssh dropbear /run/dropbear-key "
                      "/etc/dropbear/initramfs/dropbear_ed25519_host_key >/dev/null 2>&1 "
                      "&& rm -f /run/dropbear-key", what="dropbearconvert")
            if bake is not None:
                bake(merged)
            in_chroot(merged, f"update-initramfs -c -k {base.kernel_version}",
                      what="update-initramfs", timeout=900)
            listing = check_initramfs(merged, base.kernel_version, spec)
        _pack_upper(upper, output)
        return listing
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _write(root: Path, path: str, text: str, mode: int = 0o644) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(mode)


def kernel_cmdline(network: InitramfsNetwork) -> str:
    # A slow boot (a degraded RAID, or emulation) must not turn a 90 s device wait into
    # emergency mode, which is unreachable on a remote box with a locked root account.
    # `rw` (after GRUB's `ro`, so it wins): the initramfs checks the root filesystem and
    # mounts it read-write itself, so a writable root never depends on systemd's late
    # remount, which a boot starved of CPU once skipped.
    # No `rootdelay=`: Debian's initramfs sleeps that long before it does anything at all
    # (every boot of a lab node spent 300 s there). How long it waits for the root device is
    # set by ROOT_WAIT_SCRIPT instead, which costs nothing when the root is there.
    # The systemd timeouts: a boot starved of CPU once failed the /dev/mqueue and tracefs
    # mounts (90 s by default for any start job) with nothing wrong on the node.
    return (f"net.ifnames=0 console=tty0 console=ttyS0,115200 {network.kernel_ip_arg()} "
            "rw systemd.default_device_timeout_sec=600 "
            "systemd.default_timeout_start_sec=600")


def interfaces_text(network: InitramfsNetwork) -> str:
    """/etc/network/interfaces (ifupdown) of the booted node."""
    text = f"auto lo\niface lo inet loopback\n\nauto {network.interface}\n"
    if network.mode == "dhcp":
        text += f"iface {network.interface} inet dhcp\n"
    else:
        # A gateway outside the address's prefix (Hetzner's /32) is unreachable until a
        # route says it is on this link; `gateway` would fail, so add both routes by hand.
        # `replace`, not `add`: the initramfs may have left them in place, and a failing
        # post-up would fail the whole interface.
        routes = (f"    post-up ip route replace {network.gateway} dev {network.interface}\n"
                  f"    post-up ip route replace default via {network.gateway} dev "
                  f"{network.interface}\n") if network.onlink_gateway else \
            f"    gateway {network.gateway}\n"
        text += (f"iface {network.interface} inet static\n"
                 f"    address {network.address}/{network.prefix}\n{routes}")
    if network.ipv6_address:
        # ifupdown adds the default route via a link-local gateway (fe80::1) on this device.
        text += (f"\niface {network.interface} inet6 static\n"
                 f"    address {network.ipv6_address}\n"
                 f"    gateway {network.ipv6_gateway or 'fe80::1'}\n")
    if network.private_address:
        # The fleet's private network: no gateway, it only joins the nodes.
        text += (f"\nauto {network.private_interface}\n"
                 f"iface {network.private_interface} inet static\n"
                 f"    address {network.private_address}\n")
    return text


def onlink_script(network: InitramfsNetwork) -> str:
    """The init-premount script that makes an off-link gateway reachable in the initramfs,
    or "" when none is needed."""
    if network.mode != "static" or not network.onlink_gateway:
        return ""
    # klibc ipconfig cannot reach an off-link gateway on a /32: add the route after it.
    return ("#!/bin/sh\n[ \"$1\" = prereqs ] && exit 0\n. /scripts/functions\n"
            "configure_networking\n"
            f"ip route replace {network.gateway} dev {network.interface} 2>/dev/null\n"
            f"ip route replace default via {network.gateway} dev {network.interface} "
            "2>/dev/null\nexit 0\n")


# ifupdown-pre runs `udevadm settle` before networking, which gives up after 120 s and fails
# the unit (networking comes up regardless). udev can take longer than that on a slow boot
# (many disks behind a controller, or emulation: a lab node failed its health check on it).
IFUPDOWN_PRE_DROPIN = (
    "[Service]\nTimeoutSec=660\nExecStart=\n"
    "ExecStart=/bin/sh -c 'if [ \"$CONFIGURE_INTERFACES\" != \"no\" ] && "
    "[ -n \"$(ifquery --read-environment --list --exclude=lo)\" ] && [ -x /bin/udevadm ]; "
    "then udevadm settle --timeout=600; fi'\n"
)

ROOT_WAIT_SCRIPT_NAME = "clonefleet-root-wait"
ROOT_WAIT_SECONDS = 300
# How long the initramfs waits for the root device (a degraded RAID array, and then the
# passphrase) before it gives up and drops to a shell nobody can reach on a remote box.
# Debian reads that wait from `rootdelay=` but then also sleeps that long before anything
# else, so it is set here instead: initramfs-tools sources /conf/param.conf after each
# init-premount script, after the sleep. A `rootdelay=` on the command line still wins.
# (CLONEFLEET_CONF is for tests only.)
ROOT_WAIT_SCRIPT = f"""#!/bin/sh
PREREQ=""
prereqs() {{ echo "$PREREQ"; }}
case "$1" in prereqs) prereqs; exit 0 ;; esac
conf=${{CLONEFLEET_CONF:-/conf}}
[ -n "$ROOTDELAY" ] || echo "ROOTDELAY={ROOT_WAIT_SECONDS}" >> "$conf/param.conf"
exit 0
"""

DEGRADED_SCRIPT = "zz-clonefleet-degraded-raid"
DEGRADED_AFTER_SECONDS = 20
# Debian's initramfs lets mdadm start a degraded array (a dead disk) only when mdadm's
# local-block script has been called 2/3 of the root wait's seconds times, and between two
# rounds of local-block scripts it calls mdadm's alone until that count has caught up with
# the seconds elapsed. When one call takes over a second (emulation, many disks) the count
# never catches up: the calls go on until the degraded start, by then the wait has run out,
# and the node sits in the initramfs shell with its array just started. This script keeps
# mdadm's count far ahead (so that catch-up loop ends at once and every round runs every
# script) and starts degraded arrays itself, 20 s (wall) after the first round.
# Overridable paths are for tests only.
DEGRADED_RAID_SCRIPT = f"""#!/bin/sh
PREREQ="mdadm"
prereqs() {{ echo "$PREREQ"; }}
case "$1" in prereqs) prereqs; exit 0 ;; esac
run=${{CLONEFLEET_RUN:-/run}}
now=$(cut -d. -f1 "${{CLONEFLEET_UPTIME:-/proc/uptime}}")
[ -f "$run/clonefleet-degraded.start" ] || echo "$now" > "$run/clonefleet-degraded.start"
start=$(cat "$run/clonefleet-degraded.start")
echo 1000000 > "$run/count.mdadm.initrd"
if [ $((now - start)) -ge {DEGRADED_AFTER_SECONDS} ]; then
    mdadm -q --run /dev/md?* 2>/dev/null
    mdadm -q --assemble --scan --run 2>/dev/null
fi
exit 0
"""


def fstab_text(layout: NodeLayout) -> str:
    """/etc/fstab of the node: everything by the UUIDs chosen up front."""
    text = (f"UUID={layout.root_fs_uuid} / ext4 errors=remount-ro 0 1\n"
            # nofail: a node whose /boot is damaged still boots to sshd and can be repaired
            f"UUID={layout.boot_fs_uuid} /boot ext4 defaults,nofail,"
            "x-systemd.device-timeout=600s 0 2\n")
    if layout.esp_volume_ids:
        # The first disk's ESP, for whoever refreshes GRUB (`mount /boot/efi`). Nothing at
        # run time reads it (GRUB, kernel and initrd are on /boot), so it is not mounted at
        # boot: a node never waits for it, and one whose first disk died boots the same.
        # (Mounted at boot with a 120 s device wait, two emulated nodes came up without it.)
        text += f"UUID={layout.esp_uuid} /boot/efi vfat umask=0077,noauto,nofail 0 0\n"
    return text


def _write_files(root: Path, spec: NodeLayerInput) -> None:
    layout, secrets, network = spec.layout, spec.secrets, spec.network
    fqdn = f"{layout.hostname}.{layout.domain}"
    _write(root, "/etc/hostname", f"{layout.hostname}\n")
    _write(root, "/etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {fqdn} {layout.hostname}\n"
           "::1 localhost ip6-localhost ip6-loopback\n")
    _write(root, "/etc/crypttab",
           f"root UUID={layout.luks_uuid} none luks,discard,initramfs,tries=0\n")
    _write(root, "/etc/fstab", fstab_text(layout))
    if layout.raid:
        _write(root, "/etc/mdadm/mdadm.conf",
               "HOMEHOST <none>\nMAILADDR root\n"
               f"ARRAY /dev/md/boot metadata=1.0 UUID={layout.md_boot_uuid}\n"
               f"ARRAY /dev/md/root metadata=1.2 UUID={layout.md_root_uuid}\n")
        _write(root, f"/etc/initramfs-tools/scripts/local-block/{DEGRADED_SCRIPT}",
               DEGRADED_RAID_SCRIPT, 0o755)
    _write(root, f"/etc/initramfs-tools/scripts/init-premount/{ROOT_WAIT_SCRIPT_NAME}",
           ROOT_WAIT_SCRIPT, 0o755)
    _write(root, "/etc/network/interfaces", interfaces_text(network))
    _write(root, "/etc/systemd/system/ifupdown-pre.service.d/50-clonefleet.conf",
           IFUPDOWN_PRE_DROPIN)
    script = onlink_script(network)
    if script:
        _write(root, "/etc/initramfs-tools/scripts/init-premount/zz-clonefleet-onlink",
               script, 0o755)
    _write(root, "/etc/default/grub.d/50-clonefleet-node.cfg",
           f'GRUB_CMDLINE_LINUX="{kernel_cmdline(network)}"\n')
    _write(root, "/etc/initramfs-tools/conf.d/clonefleet",
           "# network for Dropbear comes from the kernel ip= argument\n"
           # The fsck hook probes the root device to learn its type, and the device does not
           # exist where the initramfs is built: name the type, or fsck is left out.
           "FSTYPE=ext4\n")
    _write(root, "/etc/ssh/ssh_host_ed25519_key", secrets.ssh_host_key, 0o600)
    _write(root, "/etc/ssh/ssh_host_ed25519_key.pub", secrets.ssh_host_public + "\n")
    _write(root, "/etc/ssh/sshd_config.d/10-clonefleet-hostkey.conf",
           "HostKey /etc/ssh/ssh_host_ed25519_key\n")
    _write(root, "/run/dropbear-key", secrets.dropbear_host_key, 0o600)
    keys = "".join(f"{key}\n" for key in spec.operator_keys)
    _write(root, "/etc/dropbear/initramfs/authorized_keys",
           initramfs_authorized_keys((*spec.operator_keys, *spec.unlock_keys)), 0o600)
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    _write(root, "/root/.ssh/authorized_keys", keys, 0o600)
    if spec.nic_modules:
        modules = root / "etc/initramfs-tools/modules"
        modules.write_text(modules.read_text() + "".join(f"{m}\n" for m in spec.nic_modules))


REQUIRED_IN_INITRAMFS = (
    "cryptroot/crypttab",
    "usr/sbin/dropbear",
    "etc/dropbear/dropbear_ed25519_host_key",
    "etc/dropbear/dropbear.conf",
    "usr/bin/cryptroot-unlock",
    "dm-crypt.ko",
    "libargon2.so",
    "fsck.ext4",  # the root is checked here: the kernel mounts it read-write (`rw`)
)


def check_initramfs(root: Path, kernel_version: str, spec: NodeLayerInput) -> list[str]:
    """Refuse to continue unless the node's initramfs can bring up network and Dropbear."""
    initrd = f"/boot/initrd.img-{kernel_version}"
    listing = in_chroot(root, f"lsinitramfs {initrd}", what="lsinitramfs").splitlines()
    missing = [item for item in REQUIRED_IN_INITRAMFS
               if not any(line.endswith(item) or f"/{item}" in line or line == item
                          for line in listing)]
    missing += [f"{module}.ko (NIC driver)" for module in spec.nic_modules
                if not any(line.endswith(f"/{module}.ko") for line in listing)]
    if spec.layout.raid and not any(line.endswith("raid1.ko") for line in listing):
        missing.append("raid1.ko")
    if spec.layout.raid and not any(line.endswith(f"local-block/{DEGRADED_SCRIPT}")
                                    for line in listing):
        missing.append(f"scripts/local-block/{DEGRADED_SCRIPT}")
    if not any(line.endswith(f"init-premount/{ROOT_WAIT_SCRIPT_NAME}") for line in listing):
        missing.append(f"scripts/init-premount/{ROOT_WAIT_SCRIPT_NAME}")
    if not any(line.endswith("/.ssh/authorized_keys") for line in listing):
        missing.append("authorized_keys")
    if missing:
        raise InstallError(f"the node's initramfs lacks {', '.join(missing)}; it would not "
                           "be unlockable after reboot, so nothing was written to the node")
    extract = "/run/initrd-check"
    in_chroot(root, f"rm -rf {extract} && unmkinitramfs {initrd} {extract}",
              what="unmkinitramfs")
    main = root / extract.lstrip("/")
    main = main / "main" if (main / "main").is_dir() else main
    crypttab = (main / "cryptroot/crypttab").read_text()
    if spec.layout.luks_uuid not in crypttab:
        raise InstallError(f"initramfs crypttab does not name LUKS UUID {spec.layout.luks_uuid}:"
                           f" {crypttab.strip()}")
    dropbear_conf = (main / "etc/dropbear/dropbear.conf").read_text()
    if f"-p {DROPBEAR_PORT}" not in dropbear_conf:
        raise InstallError(f"initramfs Dropbear does not listen on {DROPBEAR_PORT}")
    shutil.rmtree(root / extract.lstrip("/"), ignore_errors=True)
    return listing


# In the layer's tar: the base image's files the layer deletes, NUL-separated paths relative
# to the root. The installer removes them, then this list (`RescueInstaller`).
DELETIONS = ".clonefleet-layer-deletions"


def delete_listed_command(target: str) -> str:
    """Shell: after the layer is unpacked at `target`, delete the files it lists in
    `DELETIONS`, then the list (nothing when there is none)."""
    listed = shlex.quote(f"{target}/{DELETIONS}")
    return (f"if [ -f {listed} ]; then (cd {shlex.quote(target)} && xargs -0 -r rm -f -- "
            f"< {listed}) && rm -f {listed}; fi")


def layer_deletions(upper: Path) -> list[str]:
    """The files an overlay's upper layer deletes from the lower one (its whiteouts: 0:0
    character devices), as paths relative to the root. A deploy baked into the layer deletes
    some, e.g. `systemctl enable` renames SysV K01 links to S01; a symlink to /dev/null (a
    masked unit) is a file like any other."""
    found = []
    for path in upper.rglob("*"):
        info = path.lstat()
        if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
            found.append(str(path.relative_to(upper)))
    return sorted(found)


def opaque_folders(upper: Path) -> list[str]:
    """Folders of an upper layer that hide the lower one's whole content (overlayfs marks
    them opaque: the folder was removed and made again)."""
    found = []
    for path in [upper, *upper.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):
                if os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y":
                    found.append(str(path.relative_to(upper)) or "/")
    return found


def _pack_upper(upper: Path, output: Path) -> None:
    """Tar the overlay's upper layer: exactly the node's own files, and the list of the base
    image's files it deletes (`DELETIONS`) instead of overlayfs' whiteouts."""
    for leftover in ("run", "tmp", "var/tmp"):
        path = upper / leftover
        if path.is_dir():
            shutil.rmtree(path)
    opaque = opaque_folders(upper)
    if opaque:
        raise InstallError(f"the node layer replaces whole folders of the base image "
                           f"({', '.join(opaque)}); per-node changes must add, replace or "
                           "delete files")
    deletions = layer_deletions(upper)
    for relative in deletions:
        (upper / relative).unlink()
    if deletions:
        (upper / DELETIONS).write_bytes(b"".join(f"{path}\0".encode() for path in deletions))
    output.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(output, "w") as tar:
        for child in sorted(upper.iterdir()):
            tar.add(child, arcname=child.name)

