"""What a fake API's "servers" run on: the machine room behind the HTTP front.

A fake decides *when* a server powers on, resets into rescue or boots its disk (after its
action or task has progressed, as the real API does); the machine room makes it happen.
`RecordingMachines` only records (contract tests); `LabMachines` boots lab VMs and records
where their SSH ports really answer, so drivers reach them through `ProviderConfig.route`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from clonefleet.errors import ProviderError

if TYPE_CHECKING:
    from clonefleet.inventory.model import Node
    from clonefleet.providers.base import ServerInfo, SshAccess

BootMode = Literal["rescue", "disk"]


class Machines(Protocol):
    def power_on(self, server: str, mode: BootMode, ssh_keys: list[str]) -> None:
        """Start (or restart) `server` into `mode`; `ssh_keys` authorize the rescue root."""

    def power_off(self, server: str) -> None: ...

    def running(self, server: str) -> BootMode | None: ...


@dataclass
class RecordingMachines:
    """Keeps what was asked, in order; nothing boots. For contract tests."""

    calls: list[tuple[str, str, str]] = field(default_factory=list)
    state: dict[str, BootMode] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def power_on(self, server: str, mode: BootMode, ssh_keys: list[str]) -> None:
        with self.lock:
            self.calls.append(("power_on", server, mode))
            self.state[server] = mode

    def power_off(self, server: str) -> None:
        with self.lock:
            self.calls.append(("power_off", server, ""))
            self.state.pop(server, None)

    def running(self, server: str) -> BootMode | None:
        with self.lock:
            return self.state.get(server)

    def created(self, server: str, name: str, public_ipv4: str) -> None:
        """A fake that creates servers (Hetzner Cloud) made one: recorded, nothing boots."""
        with self.lock:
            self.calls.append(("created", server, name))


@dataclass
class PrintingMachines(RecordingMachines):
    """Records like `RecordingMachines` and says each call in one line (`clonefleet lab api
    --record`): the API can be tried without lab VMs."""

    out: Callable[[str], None] = print

    def power_on(self, server: str, mode: BootMode, ssh_keys: list[str]) -> None:
        super().power_on(server, mode, ssh_keys)
        self.out(f"machine {server}: power on into {mode}")

    def power_off(self, server: str) -> None:
        super().power_off(server)
        self.out(f"machine {server}: power off")

    def created(self, server: str, name: str, public_ipv4: str) -> None:
        super().created(server, name, public_ipv4)
        self.out(f"machine {server}: created for {name} ({public_ipv4})")


@dataclass(frozen=True)
class MachineSpec:
    """The lab VM standing behind one fake server: what `LabProvider` needs of a node, and
    the public address the fake's API reports for it."""

    vm: str  # the lab VM's name (its folder under <fleet state>/lab/)
    disks: tuple[str, ...]  # serials, as the fleet file lists them: the installer finds them
    public_ipv4: str = ""
    memory_mb: int = 2048
    disk_size_gb: int = 8
    # How the fake server's VM boots: "bios" or "uefi" (OVMF), as a real box's setup says.
    firmware: str = "bios"

    @classmethod
    def for_node(cls, node: Node) -> MachineSpec:
        address = node.ipv4 or (node.network.address if node.network else "")
        return cls(vm=node.name, disks=node.disks, public_ipv4=address,
                   memory_mb=node.memory_mb, disk_size_gb=node.disk_size_gb)

    def node(self) -> Node:
        from clonefleet.inventory.model import Node

        return Node(name=self.vm, region="lab", provider="lab", disks=self.disks,
                    memory_mb=self.memory_mb, disk_size_gb=self.disk_size_gb,
                    provider_settings={"firmware": self.firmware})


class LabBackend(Protocol):
    """The part of `LabProvider` the machine room uses (tests pass a recording stand-in)."""

    def ensure_server(self, node: Node) -> ServerInfo: ...

    def info(self, node: Node) -> ServerInfo: ...

    def boot_rescue(self, node: Node, ssh_public_keys: list[str]) -> SshAccess: ...

    def boot_disk(self, node: Node) -> None: ...

    def power_off(self, node: Node) -> None: ...

    def delete(self, node: Node) -> None: ...


class LabMachines:
    """Fake servers are lab VMs: "rescue" boots the lab rescue system with the keys,
    "disk" boots the VM's disks, power off stops it. Each power-on records where the VM's
    sshd (public IP:22) and Dropbear (public IP:2222) really answer in
    `<fleet state>/lab/routes.json`, for drivers whose provider has `lab_routes = true`.

    `specs` maps the fake's server ids to VMs. A fake that creates servers (Hetzner Cloud)
    calls `created(server, name, public_ipv4)` when it has made one: the fleet's node of that
    name (`nodes`) gets its VM there; a name that is no node gets none (its power-on fails).
    """

    def __init__(self, state_dir: Path, specs: Mapping[str, MachineSpec] | None = None, *,
                 nodes: Mapping[str, Node] | None = None, lab: LabBackend | None = None,
                 log: Callable[[str], None] = print) -> None:
        from clonefleet.providers.routes import routes_path

        self.state_dir = state_dir
        self.specs: dict[str, MachineSpec] = {}
        self.nodes: dict[str, Node] = dict(nodes or {})
        self.routes = routes_path(state_dir)
        self.log = log
        self._lab = lab
        self.lock = threading.RLock()
        for server, spec in (specs or {}).items():
            self.register(server, spec)

    @property
    def lab(self) -> LabBackend:
        if self._lab is None:
            from clonefleet.providers.lab import LabProvider

            self._lab = LabProvider(self.state_dir, log=self.log)
        return self._lab

    def register(self, server: str, spec: MachineSpec) -> None:
        """A server exists from now on: its (powered-off) VM and its routes too, so the
        addresses a driver records when it first sees the server already lead to the VM."""
        with self.lock:
            self.specs[server] = spec
            self._route(spec, self.lab.ensure_server(spec.node()))

    def created(self, server: str, name: str, public_ipv4: str) -> None:
        """The fake created server `server` named `name` with this public address: the
        fleet's node `name` is the VM behind it (its disks, memory, disk size)."""
        node = self.nodes.get(name)
        if node is None:
            known = ", ".join(sorted(self.nodes)) or "none"
            self.log(f"fake server {server} ({name}) is no node of the fleet (nodes: {known}): "
                     "no lab VM behind it, so it cannot power on")
            return
        self.register(server, replace(MachineSpec.for_node(node), public_ipv4=public_ipv4))

    def _spec(self, server: str) -> MachineSpec:
        try:
            return self.specs[server]
        except KeyError:
            raise ProviderError(f"fake server {server} has no lab VM behind it; register it "
                                "with LabMachines.register (or list it in the fake's "
                                "seed)") from None

    def power_on(self, server: str, mode: BootMode, ssh_keys: list[str]) -> None:
        spec = self._spec(server)
        node = spec.node()
        with self.lock:
            info = self.lab.ensure_server(node)
            if mode == "rescue":
                self.lab.boot_rescue(node, ssh_keys)
            else:
                self.lab.boot_disk(node)
            self._route(spec, info)

    def power_off(self, server: str) -> None:
        node = self._spec(server).node()
        with self.lock, contextlib.suppress(ProviderError):  # never created: already off
            self.lab.power_off(node)

    def running(self, server: str) -> BootMode | None:
        node = self._spec(server).node()
        try:
            status = self.lab.info(node).status
        except ProviderError:
            return None
        return status if status in ("rescue", "disk") else None

    def delete(self, server: str) -> None:
        """The server is gone (Hetzner Cloud's DELETE): its VM, disks and routes too (a
        server without a VM has nothing to remove)."""
        spec = self.specs.get(server)
        if spec is None:
            return
        with self.lock:
            self.lab.delete(spec.node())
            if spec.public_ipv4:
                from clonefleet.providers.routes import update_routes

                update_routes(self.routes, remove=tuple(self._keys(spec)))
            self.specs.pop(server, None)

    @staticmethod
    def _keys(spec: MachineSpec) -> list[str]:
        from clonefleet.image.base import DROPBEAR_PORT
        from clonefleet.providers.lab import FORWARDED

        return [f"{spec.public_ipv4}:22", f"{spec.public_ipv4}:{DROPBEAR_PORT}",
                *(f"{spec.public_ipv4}:{guest.replace(':', '/')}" for guest in FORWARDED)]

    def _route(self, spec: MachineSpec, info: ServerInfo) -> None:
        """The VM's sshd, Dropbear and other forwards (DNS, PowerDNS API, HTTP(S)) under
        the public address the fake reports."""
        if not spec.public_ipv4:
            return
        from clonefleet.providers.routes import update_routes

        ssh_key, dropbear_key, *_ = self._keys(spec)
        update_routes(self.routes, add={
            ssh_key: f"{info.ssh.host}:{info.ssh.port}",
            dropbear_key: f"{info.unlock.host}:{info.unlock.port}",
            **{f"{spec.public_ipv4}:{guest}": f"{host}:{port}"
               for guest, (host, port) in info.forwarded_ports.items()},
        })
