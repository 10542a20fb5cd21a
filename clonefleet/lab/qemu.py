"""Start, stop and talk to lab qemu VMs; probe whether KVM can really boot a guest here."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clonefleet.errors import ClonefleetError, ProviderError, TimeoutError_
from clonefleet.image.base import cache_lock
from clonefleet.retry import RetryPolicy, TimedOut, retry, wait_until

QEMU = "qemu-system-x86_64"
# Booting guests are polled often: waiting a second more than needed costs more than a probe.
PORT_POLL = RetryPolicy(first=1.0, cap=2.0, factor=1.5)
# qemu quits within a fraction of a second of QMP "quit".
STOP_POLL = RetryPolicy(first=0.1, cap=0.1, factor=1.0, jitter=0.0)
# UEFI firmware for `firmware = "uefi"` lab nodes, from Debian's ovmf package: the plain
# 4 MiB build without Secure Boot (the .secboot/.ms builds need SMM, i.e. `-machine q35,
# smm=on`; this one runs on qemu's default i440fx `pc` machine, under TCG too). Its VARS
# file is an empty variable store that each VM gets a writable copy of.
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
FIRMWARES = ("bios", "uefi")


@dataclass
class VmConfig:
    """Everything needed to (re)start one lab VM; saved as vm.json beside its disks."""

    name: str
    directory: Path
    memory_mb: int
    disks: list[tuple[str, str]]  # (serial, qcow2 path)
    ssh_port: int
    dropbear_port: int
    smp: int = 2
    extra_forwards: dict[str, int] = field(default_factory=dict)  # "tcp:53" -> host port
    # "bios" (qemu's SeaBIOS) or "uefi" (OVMF); a vm.json written before this key is bios.
    firmware: str = "bios"
    # The fleet's lab LAN, a second NIC (eth1) on a qemu multicast socket bound to
    # loopback: every VM of the fleet joined to the same group and port is on one Ethernet
    # segment, which never leaves this machine. Port 0: no LAN (a vm.json from before it).
    lan_group: str = ""
    lan_port: int = 0
    lan_mac: str = ""

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"

    @property
    def qmp_socket(self) -> Path:
        return self.directory / "qmp.sock"

    @property
    def pidfile(self) -> Path:
        return self.directory / "vm.pid"

    @property
    def uefi_vars(self) -> Path:
        """This VM's own UEFI variable store (boot entries OVMF writes survive restarts)."""
        return self.directory / "OVMF_VARS.fd"

    def save(self) -> None:
        data = asdict(self)
        data["directory"] = str(self.directory)
        (self.directory / "vm.json").write_text(json.dumps(data, indent=2))

    @classmethod
    def load(cls, directory: Path) -> VmConfig:
        data = json.loads((directory / "vm.json").read_text())
        data["directory"] = Path(data["directory"])
        data["disks"] = [tuple(disk) for disk in data["disks"]]
        return cls(**data)


_ports_given: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """A loopback port free for both TCP and UDP (DNS forwards use both), never handed out
    twice by this process."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        with _ports_lock:
            if port not in _ports_given:
                _ports_given.add(port)
                return port


def running_pid(config: VmConfig) -> int | None:
    try:
        pid = int(config.pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists() or QEMU.encode() not in cmdline.read_bytes():
        return None
    return pid


def start(config: VmConfig, *, accel: str, kernel: Path | None = None,
          initrd: Path | None = None, append: str = "",
          disks: list[str] | None = None) -> None:
    """Boot the VM: from `kernel`/`initrd` (the netboot rescue) or from its disks.

    `disks` limits which disks (by serial) are attached, to prove a RAID1 node boots from
    either one.
    """
    if running_pid(config) is not None:
        raise ProviderError(f"lab VM {config.name} is already running; stop it first")
    if shutil.which(QEMU) is None:
        raise ProviderError(f"{QEMU} is not installed; run scripts/setup first")
    argv = qemu_argv(config, accel=accel, kernel=kernel, initrd=initrd, append=append,
                     disks=disks)
    config.qmp_socket.unlink(missing_ok=True)
    with open(config.console_log, "ab") as log:
        log.write(f"\n=== clonefleet: starting {config.name} ({'rescue' if kernel else 'disk'},"
                  f" {accel}, {config.firmware}) at {time.strftime('%H:%M:%S')} ===\n"
                  .encode())
    result = subprocess.run(argv, capture_output=True, timeout=60)
    if result.returncode != 0:
        raise ProviderError(f"qemu failed to start {config.name}: "
                            f"{result.stderr.decode(errors='replace').strip()}")


def qemu_argv(config: VmConfig, *, accel: str, kernel: Path | None = None,
              initrd: Path | None = None, append: str = "",
              disks: list[str] | None = None) -> list[str]:
    """The qemu command line that `start` runs (creates the VM's own disk-side files: the
    SMART disk, and the UEFI variable store for a uefi VM, on first use)."""
    forwards = [f"hostfwd=tcp:127.0.0.1:{config.ssh_port}-:22",
                f"hostfwd=tcp:127.0.0.1:{config.dropbear_port}-:2222"]
    for guest, host_port in config.extra_forwards.items():
        proto, port = guest.split(":")
        forwards.append(f"hostfwd={proto}:127.0.0.1:{host_port}-:{port}")
    argv = [
        QEMU, "-name", config.name, "-nodefaults", "-display", "none",
        "-m", str(config.memory_mb), "-smp", str(config.smp if accel == "kvm" else 1),
        *accel_args(accel),
        "-chardev", f"file,id=console,path={config.console_log},append=on",
        "-serial", "chardev:console",
        "-qmp", f"unix:{config.qmp_socket},server=on,wait=off",
        "-netdev", "user,id=net0," + ",".join(forwards),
        # romfile= : we never PXE-boot, so qemu needs no iPXE ROM
        "-device", "virtio-net-pci,netdev=net0,romfile=",
        *lan_args(config),
        "-daemonize", "-pidfile", str(config.pidfile),
        *firmware_args(config),
    ]
    for index, (serial, path) in enumerate(config.disks):
        if disks is not None and serial not in disks:
            continue
        argv += ["-drive", f"if=none,id=disk{index},file={path},format=qcow2,cache=writeback,"
                 "discard=unmap",
                 "-device", f"virtio-blk-pci,drive=disk{index},serial={serial},"
                 f"bootindex={index + 1}"]
    argv += smart_disk_args(config)
    if kernel is not None:
        # The netboot-like rescue. Under OVMF this still works: the firmware loads the
        # kernel (an EFI stub) and initrd from qemu's fw_cfg before any boot entry, so the
        # rescue runs as a UEFI boot and sees /sys/firmware/efi, as on a UEFI server.
        argv += ["-kernel", str(kernel), "-append", append]
        if initrd is not None:
            argv += ["-initrd", str(initrd)]
    return argv


def lan_args(config: VmConfig) -> list[str]:
    """The second NIC on the fleet's LAN: multicast on loopback (`localaddr` sends it out
    of `lo` only, with qemu's default TTL of 1), so the VMs see each other and nothing else
    does. The guest names it eth1 (net.ifnames=0, PCI order)."""
    if not config.lan_port:
        return []
    return ["-netdev", f"socket,id=lan,mcast={config.lan_group}:{config.lan_port},"
                       "localaddr=127.0.0.1",
            "-device", f"virtio-net-pci,netdev=lan,mac={config.lan_mac},romfile="]


def firmware_args(config: VmConfig) -> list[str]:
    """qemu flags for the VM's firmware: none for bios (qemu's built-in SeaBIOS), OVMF's
    read-only code and the VM's own variable store (copied once) for uefi."""
    if config.firmware == "bios":
        return []
    if config.firmware != "uefi":
        raise ProviderError(f"lab VM {config.name}: unknown firmware {config.firmware!r} in "
                            f"{config.directory / 'vm.json'}; use one of: "
                            f"{', '.join(FIRMWARES)}")
    for path in (OVMF_CODE, OVMF_VARS):
        if not path.is_file():
            raise ProviderError(f"lab VM {config.name} boots UEFI but {path} is missing; "
                                "install Debian's ovmf package (apt-get install ovmf, or run "
                                "scripts/setup)")
    if not config.uefi_vars.exists():
        shutil.copyfile(OVMF_VARS, config.uefi_vars)
    # Plain `pc` machine (no -machine flag, as for bios): the non-Secure-Boot OVMF needs
    # neither q35 nor SMM, and TCG emulates both machines alike.
    return ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={config.uefi_vars}"]


SMART_DISK_MB = 64


def smart_disk_serial(node: str) -> str:
    """The serial of the lab's SMART disk of `node` (IDE serials hold 20 characters)."""
    return f"CFLAB-SMART-{node}"[:20]


def smart_disk_args(config: VmConfig) -> list[str]:
    """One small extra disk on an emulated AHCI controller, created on first start.

    virtio disks answer no SMART, so a lab node's smartwatch would watch nothing; qemu's
    IDE emulation answers SMART (health, attributes, self-test log), so the agent reads a
    real disk end to end. It is none of the node's install disks: its serial is not in the
    fleet file (the installer wipes only the serials listed there) and it has no bootindex.
    """
    serial = smart_disk_serial(config.name)
    if serial in {disk_serial for disk_serial, _ in config.disks}:
        raise ProviderError(f"lab VM {config.name}: install disk serial {serial!r} is reserved "
                            "for the lab's SMART disk; rename that disk in the fleet file")
    path = config.directory / "smart.qcow2"
    if not path.exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path),
                        f"{SMART_DISK_MB}M"], check=True, timeout=60)
    return ["-device", "ahci,id=ahci",
            "-drive", f"if=none,id=smartdisk,file={path},format=qcow2",
            "-device", f"ide-hd,drive=smartdisk,bus=ahci.0,serial={serial}"]


def accel_args(accel: str) -> list[str]:
    """qemu flags for `accel`. Under TCG the guest gets one vCPU: with two, the kernel's
    live code patching (int3-based static keys, e.g. when nftables loads conntrack) left
    both vCPUs spinning in soft lockups here."""
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    # AES-NI and friends make dm-crypt cheaper than the guest's C fallbacks. Not `-cpu max`:
    # its ERMS makes the guest clear pages with `rep stosb`, which TCG ran so slowly that
    # the guest reported soft lockups in dm-crypt's page allocation.
    return ["-accel", "tcg", "-cpu",
            "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+aes,+pclmulqdq"]


def stop(config: VmConfig, timeout: float = 10) -> None:
    """Power the VM off hard (like pulling the plug); no-op when it is not running."""
    pid = running_pid(config)
    if pid is None:
        return
    with contextlib.suppress(ProviderError, OSError):
        qmp(config, "quit")
    try:
        wait_until(lambda: True if running_pid(config) is None else None,
                   what=f"{config.name}: stop", timeout=timeout, policy=STOP_POLL)
        return
    except TimedOut:
        pass  # qemu ignored "quit": pull the plug
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)


def qmp(config: VmConfig, command: str, arguments: dict[str, Any] | None = None) -> Any:
    """Send one QMP command and return its result."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(config.qmp_socket))
            stream = sock.makefile("rwb")
            stream.readline()  # greeting
            request: dict[str, Any] = {"execute": command}
            if arguments:
                request["arguments"] = arguments
            for message in ({"execute": "qmp_capabilities"}, request):
                stream.write(json.dumps(message).encode() + b"\n")
                stream.flush()
                while True:
                    line = stream.readline()
                    if not line:
                        return None  # "quit" closes the socket
                    reply = json.loads(line)
                    if "error" in reply:
                        raise ProviderError(f"qemu {command}: {reply['error'].get('desc')}")
                    if "return" in reply:
                        break
            return reply.get("return")
    except (FileNotFoundError, ConnectionRefusedError) as error:
        raise ProviderError(f"lab VM {config.name} is not running ({error}); start it with "
                            f"`clonefleet power on {config.name}`") from None


def kernel_append(*, ssh_keys: list[str]) -> str:
    keys = base64.b64encode(("\n".join(ssh_keys) + "\n").encode()).decode()
    return f"console=ttyS0,115200 net.ifnames=0 panic=10 clonefleet.ssh_keys={keys}"


def known_accel(cache: Path) -> str | None:
    """The acceleration forced by CLONEFLEET_ACCEL or already probed on this host boot;
    None when only a probe (a guest boot) can tell."""
    forced = os.environ.get("CLONEFLEET_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
        data = json.loads((cache / "accel.json").read_text())
        if data["boot_id"] == boot_id:
            return str(data["accel"])
    return None


def probe_accel(cache: Path, kernel: Path, timeout: float = 20) -> str:
    """Return "kvm" only if a real guest kernel prints under KVM here, else "tcg".

    /dev/kvm can open and create VMs while guests still hang after the BIOS, so the only
    honest probe is a boot. The answer is cached per host boot.
    """
    known = known_accel(cache)
    if known is not None:
        return known
    # Several nodes provisioned at once start their VMs together: one probes, the others
    # wait for its answer instead of booting probes side by side.
    with cache_lock(cache / "accel.lock"):
        known = known_accel(cache)
        if known is not None:
            return known
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        accel = "tcg"
        if os.access("/dev/kvm", os.R_OK | os.W_OK):
            accel = "kvm" if _kernel_prints_under_kvm(kernel, timeout) else "tcg"
        temporary = cache / f".accel.json.{os.getpid()}"
        temporary.write_text(json.dumps({"boot_id": boot_id, "accel": accel}))
        temporary.replace(cache / "accel.json")
        return accel


def _kernel_prints_under_kvm(kernel: Path, timeout: float) -> bool:
    argv = [QEMU, "-nodefaults", "-display", "none", "-m", "256", "-accel", "kvm",
            "-cpu", "host", "-no-reboot", "-serial", "stdio", "-kernel", str(kernel),
            "-append", "console=ttyS0 panic=-1"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    # A stream read of the guest's console until a marker or the deadline, not a poll of a
    # condition: it stays a loop of its own rather than `wait_until`.
    deadline = time.monotonic() + timeout
    output = b""
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    try:
        while time.monotonic() < deadline and process.poll() is None:
            chunk = process.stdout.read(4096)
            if chunk:
                output += chunk
                if b"Linux version" in output:
                    return True
            time.sleep(0.2)
        return b"Linux version" in output
    finally:
        process.kill()
        process.wait()


def answers(port: int, banner: bytes = b"SSH-", patience: float = 5) -> bool:
    """Whether something in the guest answers on forwarded 127.0.0.1:`port` with `banner`.

    qemu's user network accepts TCP connections for forwarded ports even when nothing
    listens in the guest, so a connect alone proves nothing: read the banner, waiting up to
    `patience` seconds for it (or for the guest's refusal, which arrives as EOF).
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.settimeout(patience)
            return sock.recv(64).startswith(banner)
    except OSError:
        return False


# A probe given up on while the guest's network is not configured yet stays queued inside
# qemu's user network, which delivers its SYN once the guest answers ARP: the server then
# accepts a connection whose client left long ago. All of them come from one address
# (10.0.2.2), and Dropbear drops new connections while 5 from one address are still
# unauthenticated: a burst of stale probes made unlock read EOF instead of a banner (seen
# in a packet capture of a degraded RAID boot: 8 stale connections in Dropbear's first 11 s).
# So a probe waits long for its answer instead of being replaced every few seconds.
PROBE_PATIENCE = 10.0


class NotAnswering(ClonefleetError):
    """Nothing in the guest answers on a forwarded port yet (it may still be booting)."""

    transient = True


def wait_for_port(port: int, *, config: VmConfig, timeout: float, banner: bytes = b"SSH-",
                  what: str = "ssh") -> None:
    """Wait until something answers with `banner` on 127.0.0.1:`port` (see `answers`).

    Fails at once if the VM stops; after `timeout`, fails with exit 9 and the console tail.
    """

    def probe() -> None:
        if running_pid(config) is None:
            raise ProviderError(f"lab VM {config.name} stopped while waiting for {what}; "
                                f"start it with `clonefleet power on {config.name}`"
                                f"{console_tail(config)}")
        if not answers(port, banner, patience=PROBE_PATIENCE):
            raise NotAnswering(f"no {what} banner on 127.0.0.1:{port}")

    retry(probe, what=f"{config.name}: wait for {what}", timeout=timeout,
          policy=PORT_POLL, exit_code=TimeoutError_.exit_code,
          detail=lambda: console_tail(config))


def console_tail(config: VmConfig, lines: int = 25) -> str:
    try:
        text = config.console_log.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    tail = "\n".join(text.strip().splitlines()[-lines:])
    return f"\n--- console ({config.console_log}) ---\n{tail}"
