"""What every provider adapter offers and returns."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:  # the inventory loader imports this module: no import cycle at run time
    from clonefleet.inventory.model import Node, StaticNetwork


@dataclass(frozen=True)
class SshAccess:
    host: str
    port: int
    user: str = "root"
    # Host key fingerprints the provider's API reported for the system answering here
    # ("SHA256:<base64>" or "MD5:<hex:pairs>"); pinned when present, TOFU otherwise.
    host_keys: tuple[str, ...] = ()

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
    # Static IPv6 of the booted system ("2001:db8::2/64"); klibc's ipconfig (the initramfs)
    # is IPv4 only, so Dropbear is reached over IPv4.
    ipv6_address: str = ""
    ipv6_gateway: str = ""  # "fe80::1" (Hetzner, OVH) when ipv6_address is set
    # A second, private network between the fleet's nodes (the lab's LAN; a provider's
    # private network or vSwitch), "10.99.0.11/24" on `private_interface`; "" for none.
    # The booted node only: the initramfs never needs it.
    private_address: str = ""
    private_interface: str = "eth1"

    def kernel_ip_arg(self) -> str:
        if self.mode == "dhcp":
            return f"ip=:::::{self.interface}:dhcp"
        netmask = _prefix_to_netmask(self.prefix)
        return f"ip={self.address}::{self.gateway}:{netmask}::{self.interface}:off"


def static_network(network: StaticNetwork) -> InitramfsNetwork:
    """The fleet file's `[nodes.X.network]` as the install sees it: a gateway outside the
    address's own prefix (Hetzner's /32) is reached through an explicit on-link route."""
    own = ipaddress.ip_network(f"{network.address}/{network.prefix}", strict=False)
    onlink = ipaddress.ip_address(network.gateway) not in own or network.prefix == 32
    ipv6_gateway = network.ipv6_gateway or ("fe80::1" if network.ipv6_address else "")
    return InitramfsNetwork(mode="static", interface=network.interface,
                            address=network.address, prefix=network.prefix,
                            gateway=network.gateway, onlink_gateway=onlink,
                            ipv6_address=network.ipv6_address, ipv6_gateway=ipv6_gateway)


def node_network(provider: Provider, node: Node) -> InitramfsNetwork:
    """The node's network as its provider gives it, with the fleet file's `private_address`
    (a provider's private network: vSwitch, Cloud network, vRack) on top when set."""
    network = provider.network(node)
    if node.private_address:
        network = replace(network, private_address=node.private_address,
                          private_interface=node.private_interface)
    return network


def _prefix_to_netmask(prefix: int) -> str:
    value = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    return ".".join(str((value >> shift) & 0xFF) for shift in (24, 16, 8, 0))


# What a server is doing, as every driver reports it (each maps its API's own words):
# "missing": no such server (yet); "off": powered off; "starting": an action or task is
# in flight (power-on, reset, reinstall); "rescue": running the provider's rescue system;
# "disk": running (or booting) from its own disk.
ServerStatus = Literal["missing", "off", "starting", "rescue", "disk"]
SERVER_STATUSES: tuple[ServerStatus, ...] = ("missing", "off", "starting", "rescue", "disk")


@dataclass(frozen=True)
class ServerInfo:
    node: str
    server_id: str
    status: ServerStatus
    ssh: SshAccess  # where the rescue system and later sshd answer
    unlock: SshAccess  # where Dropbear in the initramfs answers
    nic_modules: tuple[str, ...] = ()
    details: dict[str, str] = field(default_factory=dict)
    # Where the controller reaches the node's other services when not at its public
    # address: "tcp/8081" -> ("127.0.0.1", 40123), for lab VMs behind qemu port forwards.
    forwarded_ports: Mapping[str, tuple[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderConfig:
    """One `[providers.NAME]` table of the fleet file, validated against its driver's
    settings. Credentials are never here: `settings` names the environment variables (or
    config files) they come from, and drivers read them when they first need them."""

    name: str  # what regions and nodes say in `provider = "NAME"`
    driver: str  # "lab" | "hetzner-cloud" | "hetzner-robot" | "ovh"
    settings: Mapping[str, Any] = field(default_factory=dict)
    fleet_path: Path | None = None
    fleet_name: str = ""  # labels and key names say which fleet a server belongs to
    # Lab fakes only: maps the address the API reports (public IP, port 22) to where the
    # lab VM behind it really answers (127.0.0.1, a forwarded port). Identity otherwise.
    route: Callable[[SshAccess], SshAccess] = lambda access: access
    # Lab fakes only: the lab VM's other forwarded ports for a public address
    # ({"udp/53": ("127.0.0.1", 40123), ...}), as `ServerInfo.forwarded_ports`. Empty otherwise.
    forwards: Callable[[str], Mapping[str, tuple[str, int]]] = lambda host: {}


class Provider(Protocol):
    name: str

    @property
    def boot_timeout(self) -> float:
        """How long one boot may take to reach Dropbear, or sshd after the unlock: a
        dedicated server's firmware alone can take minutes, and an emulated lab VM is
        slower still (a class attribute satisfies this as well as a property)."""
        ...

    def ensure_server(self, node: Node) -> ServerInfo: ...

    def info(self, node: Node) -> ServerInfo: ...

    def boot_rescue(self, node: Node, ssh_public_keys: list[str]) -> SshAccess: ...

    def boot_disk(self, node: Node) -> None: ...

    def reset(self, node: Node) -> None: ...

    def power_on(self, node: Node) -> bool:
        """Start a server that is off, from its disk (never into rescue); a server that is
        already on is left alone. True when the driver asked the provider to start it."""
        ...

    def power_off(self, node: Node) -> None: ...

    def delete(self, node: Node) -> None: ...

    def list(self) -> list[ServerInfo]: ...

    def network(self, node: Node) -> InitramfsNetwork: ...

    def wait_ready(self, access: SshAccess, node: Node, timeout: float, what: str) -> None: ...
