"""The lab provider: qemu VMs under `<fleet state>/lab/<node>/` behave like bare servers."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from clonefleet.errors import ProviderError
from clonefleet.image.base import ensure_base_image
from clonefleet.inventory import Node
from clonefleet.lab import lan, qemu
from clonefleet.lab.rescue import RescueSystem, ensure_rescue
from clonefleet.paths import cache_dir
from clonefleet.providers.base import (
    InitramfsNetwork,
    ProviderConfig,
    ServerInfo,
    ServerStatus,
    SshAccess,
)

# Guest ports the controller reaches through qemu's port forwards on 127.0.0.1 (the lab's
# stand-in for a node's public address): DNS, the PowerDNS API, HTTP and HTTPS.
FORWARDED = ("udp:53", "tcp:53", "tcp:8081", "tcp:80", "tcp:443")


class LabProvider:
    name = "lab"

    def __init__(self, state_dir: Path, log: Callable[[str], None] = print) -> None:
        self.root = state_dir / "lab"
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = log
        self._rescue: RescueSystem | None = None
        self._accel: str | None = None

    # -- helpers ---------------------------------------------------------------------------

    def _dir(self, node: Node | str) -> Path:
        return self.root / (node if isinstance(node, str) else node.name)

    def _config(self, node: Node | str) -> qemu.VmConfig:
        directory = self._dir(node)
        if not (directory / "vm.json").exists():
            raise ProviderError(f"lab VM {node if isinstance(node, str) else node.name} does "
                                "not exist; provision it first")
        return qemu.VmConfig.load(directory)

    def rescue_system(self) -> RescueSystem:
        if self._rescue is None:
            self._rescue = ensure_rescue(ensure_base_image(cache_dir(), self.log), self.log)
        return self._rescue

    def accel(self) -> str:
        if self._accel is None:
            # Known already (this host boot's probe, or forced): no rescue system is needed,
            # so starting a VM from its disk (`power on`) never builds one.
            self._accel = qemu.known_accel(cache_dir()) or qemu.probe_accel(
                cache_dir(), self.rescue_system().kernel)
            self.log(f"lab: qemu acceleration: {self._accel}")
        return self._accel

    @property
    def boot_timeout(self) -> float:
        """Under emulation (TCG) a boot takes minutes and slows down further with the
        machine's load (a CI run saw 9 minutes from unlock to sshd): allow twice a real
        server's time."""
        # Never probe (a guest boot, maybe an image build) just to pick a timeout.
        accel = self._accel or qemu.known_accel(cache_dir())
        return 600.0 if accel == "kvm" else 1200.0

    def _info(self, config: qemu.VmConfig) -> ServerInfo:
        running = qemu.running_pid(config) is not None
        mode_file = self._dir(config.name) / "mode"
        mode = mode_file.read_text().strip() if mode_file.exists() else "off"
        status: ServerStatus = "off"
        if running:
            status = "rescue" if mode == "rescue" else "disk"
        return ServerInfo(
            node=config.name, server_id=f"lab-{config.name}",
            status=status,
            ssh=SshAccess("127.0.0.1", config.ssh_port),
            unlock=SshAccess("127.0.0.1", config.dropbear_port),
            nic_modules=("virtio_net",),
            details={"directory": str(config.directory), "console": str(config.console_log),
                     "firmware": config.firmware},
            forwarded_ports={guest.replace(":", "/"): ("127.0.0.1", host_port)
                             for guest, host_port in config.extra_forwards.items()},
        )

    # -- protocol ------------------------------------------------------------------------

    def ensure_server(self, node: Node) -> ServerInfo:
        """Create the bare box (blank disks, fixed ports) if it does not exist yet."""
        directory = self._dir(node)
        firmware = firmware_of(node)
        if (directory / "vm.json").exists():
            config = self._config(node)
            if config.firmware != firmware:
                # The fleet file decides, as a server's setup menu would; the hybrid disk
                # layout boots either way, so an installed disk stays bootable.
                self.log(f"lab: {node.name} firmware {config.firmware} -> {firmware} "
                         "(takes effect at its next start)")
                config.firmware = firmware
                config.save()
            if self._join_lan(config):
                self.log(f"lab: {node.name} joins the fleet's LAN at {config.lan_mac} "
                         "(takes effect at its next start)")
            return self._info(config)
        directory.mkdir(parents=True, exist_ok=True)
        disks = []
        for serial in node.disks:
            if len(serial) > 20:
                raise ProviderError(f"lab disk serial {serial!r} is longer than virtio's 20 "
                                    "characters; shorten it in the fleet file")
            path = directory / f"{serial}.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path),
                            f"{node.disk_size_gb}G"], check=True)
            disks.append((serial, str(path)))
        config = qemu.VmConfig(name=node.name, directory=directory, memory_mb=node.memory_mb,
                               disks=disks, ssh_port=qemu.free_port(),
                               dropbear_port=qemu.free_port(),
                               extra_forwards={guest: qemu.free_port()
                                               for guest in FORWARDED},
                               firmware=firmware)
        self._join_lan(config)
        config.save()
        return self._info(config)

    def _join_lan(self, config: qemu.VmConfig) -> bool:
        """Give the VM its seat on the fleet's LAN and the forwards it lacks (a VM made by
        an older version); whether anything changed (then saved)."""
        seat = lan.seat(self.root, config.name)
        missing = [guest for guest in FORWARDED if guest not in config.extra_forwards]
        if (config.lan_group, config.lan_port, config.lan_mac) == (seat.group, seat.port,
                                                                    seat.mac) and not missing:
            return False
        config.lan_group, config.lan_port, config.lan_mac = seat.group, seat.port, seat.mac
        for guest in missing:
            config.extra_forwards[guest] = qemu.free_port()
        config.save()
        return True

    def info(self, node: Node) -> ServerInfo:
        return self._info(self._config(node))

    def boot_rescue(self, node: Node, ssh_public_keys: list[str]) -> SshAccess:
        config = self._config(node)
        rescue = self.rescue_system()
        qemu.stop(config)
        qemu.start(config, accel=self.accel(), kernel=rescue.kernel, initrd=rescue.initrd,
                   append=qemu.kernel_append(ssh_keys=ssh_public_keys))
        (self._dir(node) / "mode").write_text("rescue\n")
        return SshAccess("127.0.0.1", config.ssh_port)

    def boot_disk(self, node: Node, disks: list[str] | None = None) -> None:
        config = self._config(node)
        qemu.stop(config)
        qemu.start(config, accel=self.accel(), disks=disks)
        (self._dir(node) / "mode").write_text("disk\n")

    def reset(self, node: Node) -> None:
        qemu.qmp(self._config(node), "system_reset")

    def power_on(self, node: Node) -> bool:
        """Start a stopped VM from its disk; a running VM (rescue or disk) is left alone."""
        config = self._config(node)
        if qemu.running_pid(config) is not None:
            return False
        self.boot_disk(node)
        return True

    def power_off(self, node: Node) -> None:
        qemu.stop(self._config(node))

    def delete(self, node: Node | str) -> None:
        directory = self._dir(node)
        if (directory / "vm.json").exists():
            qemu.stop(qemu.VmConfig.load(directory))
        shutil.rmtree(directory, ignore_errors=True)
        lan.release(self.root, node if isinstance(node, str) else node.name)

    def list(self) -> list[ServerInfo]:
        return [self._info(qemu.VmConfig.load(path.parent))
                for path in sorted(self.root.glob("*/vm.json"))]

    def network(self, node: Node) -> InitramfsNetwork:
        """DHCP from qemu's user network on eth0 (the "public" side, through which the
        controller reaches the VM's forwarded ports), and the fleet's LAN on eth1."""
        return InitramfsNetwork(mode="dhcp", private_address=lan.seat(self.root,
                                                                       node.name).address)

    def wait_ready(self, access: SshAccess, node: Node, timeout: float, what: str) -> None:
        qemu.wait_for_port(access.port, config=self._config(node), timeout=timeout, what=what)

    def console_tail(self, node: Node) -> str:
        return qemu.console_tail(self._config(node))


def firmware_of(node: Node) -> str:
    """The lab node's `firmware` key (validated by the fleet loader), "bios" by default."""
    return str(node.provider_settings.get("firmware", "bios"))


def create(config: ProviderConfig, state_dir: Path,
           log: Callable[[str], None] = print) -> LabProvider:
    return LabProvider(state_dir, log=log)
