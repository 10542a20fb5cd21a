"""Hardening of every full-clone node: kernel and network sysctl, unused kernel modules off,
no core dumps, stricter login defaults, an audit trail, a legal banner, tight permissions.

Measured with Lynis (`bench/hardening.py`); every setting and how to relax it is in
docs/hardening.md. Nothing here may break what a node serves (WireGuard, PostgreSQL, HAProxy,
PowerDNS) or clonefleet's own access (key-only root SSH, see templates/base/).

Host data (defaults below):
- `clonefleet_offline`: the target is a root filesystem without a running systemd (a chroot,
  see `deploys._systemd`): files are written and units enabled, nothing is started, reloaded
  or queried, and no sysctl value is applied (a chroot's /proc is the controller's kernel:
  they apply at the node's next boot).
- `clonefleet_hardening_sysctl_overrides`: {key: value} over `SYSCTL`; a value of None drops
  the key (the kernel default applies).
- `clonefleet_hardening_allowed_modules`: modules of `DISABLED_MODULES` to keep loadable.
- `clonefleet_hardening_core_dumps`: True keeps core dumps possible (debugging a crash).
- `clonefleet_hardening_umask`, `clonefleet_hardening_shell_timeout` (seconds, 0: none),
  `clonefleet_hardening_banner`, `clonefleet_hardening_auditd`,
  `clonefleet_hardening_security_mirror` ("" leaves apt sources alone; default: the image's,
  `CLONEFLEET_DEBIAN_SECURITY_MIRROR` on the controller).
Every package is in the node image (clonefleet.image.base.HARDENING_PACKAGES), so a run never
needs the network; a second run reports no changes.
"""

from __future__ import annotations

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import Directory, File
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server

from clonefleet.image.base import SECURITY_SOURCES, security_mirror, security_sources
from deploys._paths import template
from deploys._systemd import offline, unit

PACKAGES = ["auditd", "libpam-tmpdir", "libpam-passwdqc", "apt-listchanges", "debsums", "acct"]

# Each value with what it protects against. A node forwards nothing (WireGuard terminates
# on the node itself), so forwarding stays off; IPv6 stays on.
SYSCTL: dict[str, int | str] = {
    # kernel
    "kernel.kptr_restrict": 2,  # kernel addresses hidden: no KASLR bypass from /proc
    "kernel.dmesg_restrict": 1,  # kernel log (addresses, hardware) for root only
    "kernel.perf_event_paranoid": 3,  # no perf events for unprivileged users (side channels)
    "kernel.unprivileged_bpf_disabled": 1,  # no eBPF for unprivileged users (verifier bugs)
    "net.core.bpf_jit_harden": 2,  # JIT spraying of BPF programs
    "kernel.randomize_va_space": 2,  # full ASLR (stack, mmap, heap)
    "kernel.yama.ptrace_scope": 1,  # a process may only trace its own children
    "kernel.core_uses_pid": 1,  # a core file, if ever allowed, never overwrites another
    "kernel.ctrl-alt-del": 0,  # Ctrl-Alt-Del on a console is passed to init, no hard reboot
    "dev.tty.ldisc_autoload": 0,  # no autoloaded TTY line disciplines (n_hdlc, CVE-2017-2636)
    "fs.suid_dumpable": 0,  # setuid programs never dump memory
    "fs.protected_hardlinks": 1,  # hard links to others' files: privilege escalation in /tmp
    "fs.protected_symlinks": 1,  # symlink races in sticky world-writable directories
    "fs.protected_fifos": 2,  # FIFO spoofing in sticky world-writable directories
    "fs.protected_regular": 2,  # opening others' files in sticky world-writable directories
    # network: this host routes nothing
    "net.ipv4.ip_forward": 0,  # not a router (WireGuard's peers are this host itself)
    "net.ipv4.conf.all.send_redirects": 0,  # a non-router never redirects others' traffic
    "net.ipv4.conf.default.send_redirects": 0,
    "net.ipv4.conf.all.accept_redirects": 0,  # ICMP redirects: route hijacking (MITM)
    "net.ipv4.conf.default.accept_redirects": 0,
    "net.ipv4.conf.all.secure_redirects": 0,
    "net.ipv4.conf.default.secure_redirects": 0,
    "net.ipv6.conf.all.accept_redirects": 0,
    "net.ipv6.conf.default.accept_redirects": 0,
    "net.ipv4.conf.all.accept_source_route": 0,  # source routing: spoofed return paths
    "net.ipv4.conf.default.accept_source_route": 0,
    "net.ipv6.conf.all.accept_source_route": 0,
    "net.ipv6.conf.default.accept_source_route": 0,
    # Loose reverse path (2): a source no route leads back to at all is dropped. Not strict
    # (1): a node has a public and often a private interface (the lab's eth1, a provider's
    # vSwitch or vRack) and a WireGuard mesh over either; strict drops, silently, any packet
    # whose source routes back through another interface than it came in on. The node routes
    # nothing (ip_forward 0) and nftables filters its input, so strict adds little here.
    "net.ipv4.conf.all.rp_filter": 2,
    "net.ipv4.conf.default.rp_filter": 2,
    "net.ipv4.conf.all.log_martians": 1,  # log impossible source addresses (spoofing)
    "net.ipv4.conf.default.log_martians": 1,
    "net.ipv4.conf.all.bootp_relay": 0,  # not a DHCP relay
    "net.ipv4.conf.all.proxy_arp": 0,  # never answers ARP for others
    "net.ipv4.tcp_syncookies": 1,  # SYN floods
    "net.ipv4.icmp_echo_ignore_broadcasts": 1,  # smurf amplification
    "net.ipv4.icmp_ignore_bogus_error_responses": 1,  # log noise from bogus ICMP errors
}
# systemd-sysctl applies files by name, later wins: after procps' 99-protect-links.conf
# (fs.protected_fifos = 1) and 99-sysctl.conf, or those would undo these values at boot.
SYSCTL_FILE = "/etc/sysctl.d/99-zz-clonefleet-hardening.conf"

# Loaded by nothing a node runs. Network protocols (each reachable by an unprivileged
# socket() call), filesystems (reachable by mounting a crafted image), and device buses
# (USB storage, FireWire DMA) a rack server never uses. Never in this list: wireguard,
# ext4, vfat (the ESP), dm-crypt, raid1, md_mod; test_hardening_deploy checks it.
DISABLED_MODULES = (
    "dccp", "sctp", "rds", "tipc", "n-hdlc", "ax25", "netrom", "x25", "rose", "decnet",
    "econet", "af_802154", "ipx", "appletalk", "psnap", "p8023", "p8022", "can", "atm",
    "cramfs", "freevxfs", "jffs2", "hfs", "hfsplus", "udf",
    "usb-storage", "firewire-core", "firewire-ohci", "firewire-sbp2", "thunderbolt",
)
MODPROBE_FILE = "/etc/modprobe.d/clonefleet-hardening.conf"
NEVER_DISABLED = frozenset({"wireguard", "ext4", "vfat", "dm-crypt", "dm_crypt", "raid1",
                            "md", "md_mod"})

BANNER = (
    "Authorized access only. This system is private property; all activity is logged and "
    "monitored.\nUnauthorized access is prohibited and will be prosecuted."
)

# Lynis' profile: cron folders and sshd's settings readable by root only (they reveal what
# runs when, and how access is guarded); sudoers.d as sudo itself expects it.
# /boot/grub/grub.cfg (the installer writes it so too: clonefleet/install/rescue.py).
GRUB_CFG_MODE = "600"
RESTRICTED_DIRECTORIES = ("/etc/cron.d", "/etc/cron.daily", "/etc/cron.hourly",
                          "/etc/cron.weekly", "/etc/cron.monthly")

# The assembler needrestart's binutils brings along (an amd64 fleet); no compiler is installed.
COMPILERS = ("/usr/bin/x86_64-linux-gnu-as",)


def sysctl_values(overrides: dict[str, int | str | None]) -> dict[str, int | str]:
    """Given the operator's overrides, return the sysctl keys and values to write."""
    merged: dict[str, int | str | None] = {**SYSCTL, **overrides}
    return {key: value for key, value in merged.items() if value is not None}


def disabled_modules(allowed: list[str]) -> list[str]:
    keep = {name.replace("_", "-") for name in allowed}
    return [name for name in DISABLED_MODULES
            if name.replace("_", "-") not in keep and name not in NEVER_DISABLED]


@deploy("clonefleet hardening", data_defaults={
    "clonefleet_offline": False,
    "clonefleet_hardening_sysctl_overrides": {},
    "clonefleet_hardening_allowed_modules": [],
    "clonefleet_hardening_core_dumps": False,
    "clonefleet_hardening_umask": "027",
    "clonefleet_hardening_shell_timeout": 900,
    "clonefleet_hardening_banner": BANNER,
    "clonefleet_hardening_auditd": True,
    "clonefleet_hardening_security_mirror": security_mirror(),
})
def hardening() -> None:
    data = host.data
    apt.packages(name="Hardening packages (from the image)", packages=PACKAGES)

    _kernel(data.clonefleet_hardening_sysctl_overrides,
            data.clonefleet_hardening_allowed_modules)
    if not data.clonefleet_hardening_core_dumps:
        _no_core_dumps()
    _logins(str(data.clonefleet_hardening_umask), int(data.clonefleet_hardening_shell_timeout),
            str(data.clonefleet_hardening_banner))
    if data.clonefleet_hardening_auditd:
        _auditd()
    _permissions()
    # Process accounting (acct): which commands ran and when, for incident review.
    unit("Process accounting running", "acct.service")

    mirror = data.clonefleet_hardening_security_mirror
    if mirror:
        # unattended-upgrades is set to install security updates (templates/base): it needs
        # the security suite among apt's sources to have any to install.
        # The image writes the same file (older images lack it).
        files.put(name="Debian security updates source", src=StringIO(
            security_sources(mirror)), dest=SECURITY_SOURCES, mode="644")


def _kernel(overrides: dict[str, int | str | None], allowed: list[str]) -> None:
    sysctl_file = files.template(name="Kernel and network sysctl", src=template(
        "hardening/sysctl.conf.j2"), dest=SYSCTL_FILE, mode="644",
        sysctl=sysctl_values(overrides))
    if not offline():
        # Only this file: `--system` would also re-apply every package's settings. -e: a key
        # this kernel lacks (e.g. IPv6 disabled at boot) must not fail the deploy.
        server.shell(name="Apply sysctl now", commands=[f"sysctl -q -e -p {SYSCTL_FILE}"],
                     _if=sysctl_file.did_change)
    files.template(name="Unused kernel modules disabled", src=template(
        "hardening/modprobe.conf.j2"), dest=MODPROBE_FILE, mode="644",
        modules=disabled_modules(allowed))
    # A stray Ctrl-Alt-Del on a remote console (KVM, IPMI) must not reboot a node, which then
    # waits in its initramfs for an unlock.
    files.link(name="Ctrl-Alt-Del does not reboot", path="/etc/systemd/system/"
               "ctrl-alt-del.target", target="/dev/null")


def _no_core_dumps() -> None:
    files.put(name="No core dumps: systemd-coredump", src=template("hardening/coredump.conf"),
              dest="/etc/systemd/coredump.conf.d/50-clonefleet.conf", mode="644")
    # Read by systemd at boot (or daemon-reexec): a running node keeps its services' limits
    # until then, while sysctl fs.suid_dumpable and the limits below apply at once.
    files.put(name="No core dumps: services", src=template("hardening/system-coredump.conf"),
              dest="/etc/systemd/system.conf.d/50-clonefleet-coredump.conf", mode="644")
    files.put(name="No core dumps: login sessions", src=template(
        "hardening/limits-coredump.conf"), dest="/etc/security/limits.d/50-clonefleet.conf",
        mode="644")
    files.put(name="No core dumps: shells", src=template("hardening/profile-coredump.sh"),
              dest="/etc/profile.d/clonefleet-coredump.sh", mode="644")


def _login_defs(key: str, value: str) -> None:
    """Set an uncommented `KEY value` line in login.defs (appended when missing)."""
    files.line(name=f"login.defs {key}", path="/etc/login.defs",
               line=f"^{key}[[:space:]].*", replace=f"{key}\t{value}")


def _logins(umask: str, shell_timeout: int, banner: str) -> None:
    # Console logins (login(1)) and new home folders (useradd: 750) not readable by everyone.
    # pam_umask is not enabled, so SSH sessions (and deploys) and services keep 022.
    _login_defs("UMASK", umask)
    # Passwords are off for every account (key-only SSH); should one be set with the shadow
    # tools (ENCRYPT_METHOD SHA512 here), hash it slowly against offline cracking ...
    _login_defs("SHA_CRYPT_MIN_ROUNDS", "65536")
    _login_defs("SHA_CRYPT_MAX_ROUNDS", "131072")
    # ... and no password aging: an expired password makes pam_unix refuse even a key login,
    # which would lock admins out after PASS_MAX_DAYS (docs/hardening.md).
    if shell_timeout > 0:
        # Forgotten root shells on a console or a stale SSH session log out by themselves.
        files.line(name="Idle shells time out", path="/etc/profile",
                   line="^readonly TMOUT=.*", replace=f"readonly TMOUT={shell_timeout}")
        files.line(name="Idle shell timeout exported", path="/etc/profile",
                   line="^export TMOUT$", replace="export TMOUT")
    for path in ("/etc/issue", "/etc/issue.net"):
        # The legal banner: unauthorized use is unlawful, use is monitored.
        files.template(name=f"Legal banner {path}", src=template("hardening/issue.j2"),
                       dest=path, mode="644", banner=banner)


def _auditd() -> None:
    rules = files.template(name="Audit rules", src=template("hardening/audit.rules.j2"),
                           dest="/etc/audit/rules.d/50-clonefleet.rules", mode="640")
    unit("auditd running", "auditd.service")
    if not offline():
        # auditd.service refuses manual stops (so no restart): augenrules loads new rules.
        server.shell(name="Audit rules loaded", commands=["augenrules --load"],
                     _if=rules.did_change)


def _permissions() -> None:
    for path in RESTRICTED_DIRECTORIES:
        if host.get_fact(Directory, path=path):
            files.directory(name=f"Permissions {path}", path=path, mode="700")
    files.directory(name="Permissions /etc/sudoers.d", path="/etc/sudoers.d", mode="750")
    files.file(name="Permissions /etc/ssh/sshd_config", path="/etc/ssh/sshd_config", mode="600")
    for path in COMPILERS:
        if host.get_fact(File, path=path) and not (host.get_fact(
                Command, command=f"dpkg-statoverride --list {path} || true") or "").strip():
            # needrestart pulls in binutils; a shell gained on a node should not assemble
            # exploits locally. A statoverride survives package upgrades, a chmod would not.
            server.shell(name=f"{path} for root only", commands=[
                f"dpkg-statoverride --update --add root root 0750 {path}"])
    if host.get_fact(File, path="/boot/grub/grub.cfg"):
        # grub.cfg names the kernel command line and disks; update-grub resets it to 444.
        files.file(name="Permissions /boot/grub/grub.cfg", path="/boot/grub/grub.cfg",
                   mode=GRUB_CFG_MODE)
