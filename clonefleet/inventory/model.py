"""Plain data for a validated fleet: regions, nodes, routed names."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clonefleet.state.config import SQLITE, StateConfig
from clonefleet.unlockd.policy import FleetUnlockPolicy

if TYPE_CHECKING:
    from clonefleet.providers.base import ProviderConfig


@dataclass(frozen=True)
class Region:
    name: str
    provider: str
    location: str
    latitude: float
    longitude: float
    min_active: int = 1


@dataclass(frozen=True)
class StaticNetwork:
    """Initramfs and boot network when the provider does not offer DHCP."""

    address: str
    prefix: int
    gateway: str
    interface: str = "eth0"
    ipv6_address: str = ""  # with its prefix length, e.g. "2a01:4f8:1:2::2/64"
    ipv6_gateway: str = ""  # "fe80::1" when ipv6_address is set and this is not


@dataclass(frozen=True)
class Node:
    name: str
    region: str
    provider: str
    disks: tuple[str, ...]
    server_type: str = ""
    server_id: str = ""
    memory_mb: int = 2048
    disk_size_gb: int = 8
    ipv4: str = ""
    ipv6: str = ""
    network: StaticNetwork | None = None
    # The node's address on the provider's private network (Hetzner vSwitch or Cloud
    # network, OVH vRack): "10.99.0.101/24" on `private_interface`; "" for the provider's
    # own (a lab VM's seat on the lab's LAN) or none.
    private_address: str = ""
    private_interface: str = "eth1"
    labels: dict[str, str] = field(default_factory=dict)
    # The driver's own per-node keys (e.g. hetzner-robot's robot_server), validated against
    # the driver's `node_keys`; only keys the fleet file sets.
    provider_settings: dict[str, Any] = field(default_factory=dict)

    @property
    def raid(self) -> bool:
        return len(self.disks) > 1


@dataclass(frozen=True)
class Admin:
    name: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class RoutedName:
    name: str
    ttl: int = 30
    answers: int = 1  # how many of the nearest active nodes each geo answer lists


@dataclass(frozen=True)
class UnlockerNodes:
    """The nodes that run an unlocker (`[unlock] unlockers`, `deploys/unlocker.py`), and the
    shared store's address as those nodes reach it (`[unlock] store_url`, or the fleet's own
    etcd endpoints): "etcd://HOST:PORT[,HOST:PORT...]/PREFIX", the fleet's prefix."""

    nodes: tuple[str, ...] = ()
    store_url: str = ""


@dataclass(frozen=True)
class Fleet:
    name: str
    path: Path
    domain: str
    regions: dict[str, Region]
    nodes: dict[str, Node]
    routed: tuple[RoutedName, ...] = ()
    admins: tuple[Admin, ...] = ()
    ssh_key: str = ""
    min_active_total: int = 1
    dns_grace_seconds: int = 10
    allowed_tcp_ports: tuple[int, ...] = (22,)
    allowed_udp_ports: tuple[int, ...] = ()
    control_url: str = ""  # where nodes' smartwatch agents reach `clonefleet serve`
    alert_urls: tuple[str, ...] = ()  # apprise URLs for the agents' alerts
    # Where the controller runs `clonefleet` from, as networks ("203.0.113.7/32"): besides
    # the mesh, only these reach the nodes' backend ports (PowerDNS API, PostgreSQL, metrics).
    controller_addresses: tuple[str, ...] = ()
    # Every provider a region or node names: its `[providers.NAME]` table, or a driver's
    # defaults when a driver is named without a table.
    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    # [services.NAME] settings of every known service, defaults filled in
    # (`clonefleet.services.registry`).
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Where node states, facts and locks live: SQLite in the state folder unless the fleet
    # file names an etcd cluster ([fleet] state or [state]).
    state: StateConfig = SQLITE
    # When `clonefleet unlockd` unlocks a node after a reboot ([unlock], per region
    # [regions.NAME.unlock]; `clonefleet.unlockd.policy`).
    unlock: FleetUnlockPolicy = field(default_factory=FleetUnlockPolicy)
    # Which nodes run an unlocker, so that nodes unlock each other while the controller is
    # down ([unlock] unlockers; only with an etcd store).
    unlockers: UnlockerNodes = field(default_factory=UnlockerNodes)

    def node(self, name: str) -> Node:
        from clonefleet.errors import UnknownNodeError

        try:
            return self.nodes[name]
        except KeyError:
            known = ", ".join(sorted(self.nodes)) or "none"
            raise UnknownNodeError(
                f"unknown node {name!r} in fleet {self.name!r} ({self.path}); known nodes: {known}"
            ) from None

    def nodes_in_region(self, region: str) -> list[Node]:
        return [node for node in self.nodes.values() if node.region == region]
