"""What every provider adapter offers and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from clonefleet.inventory import Node


@dataclass(frozen=True)
class SshAccess:
    host: str
    port: int
    user: str = "root"

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True)
class InitramfsNetwork:
    """How the initramfs (klibc ipconfig) and the booted node get their network."""

    mode: str  # "dhcp" | "static"
    interface: str = "eth0"
    address: str = ""
    prefix: int = 0
    gateway: str = ""
    # Hetzner: /32 with an off-link gateway needs an explicit on-link route in the initramfs.
    onlink_gateway: bool = False

    def kernel_ip_arg(self) -> str:
        if self.mode == "dhcp":
            return f"ip=:::::{self.interface}:dhcp"
        netmask = _prefix_to_netmask(self.prefix)
        return f"ip={self.address}::{self.gateway}:{netmask}::{self.interface}:off"


def _prefix_to_netmask(prefix: int) -> str:
    value = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    return ".".join(str((value >> shift) & 0xFF) for shift in (24, 16, 8, 0))


@dataclass(frozen=True)
class ServerInfo:
    node: str
    server_id: str
    status: str  # "off" | "rescue" | "disk" | "missing"
    ssh: SshAccess  # where the rescue system and later sshd answer
    unlock: SshAccess  # where Dropbear in the initramfs answers
    nic_modules: tuple[str, ...] = ()
    details: dict[str, str] = field(default_factory=dict)


class Provider(Protocol):
    name: str

    def ensure_server(self, node: Node) -> ServerInfo: ...

    def info(self, node: Node) -> ServerInfo: ...

    def boot_rescue(self, node: Node, ssh_public_keys: list[str]) -> SshAccess: ...

    def boot_disk(self, node: Node) -> None: ...

    def reset(self, node: Node) -> None: ...

    def power_off(self, node: Node) -> None: ...

    def delete(self, node: Node) -> None: ...

    def list(self) -> list[ServerInfo]: ...

    def network(self, node: Node) -> InitramfsNetwork: ...

    def wait_ready(self, access: SshAccess, node: Node, timeout: float, what: str) -> None: ...
