"""The DNS map: which routed names exist and which active nodes stand behind each."""

from __future__ import annotations

from dataclasses import dataclass, field

from clonefleet.inventory import Fleet
from clonefleet.state import StateStore

# States in which a node is kept out of DNS answers on purpose (as opposed to lifecycle states
# before `active`, where it simply is not serving yet).
DRAIN_STATES = ("draining", "drained")
# The state of a node the store has never heard of: the first step of its life.
UNKNOWN_STATE = "ordered"


@dataclass(frozen=True)
class MapNode:
    """One node as the map sees it."""

    name: str
    region: str
    state: str
    since: float | None
    actor: str
    reason: str
    ipv4: str
    ipv6: str
    latitude: float
    longitude: float

    @property
    def active(self) -> bool:
        return self.state == "active"

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(address for address in (self.ipv4, self.ipv6) if address)


@dataclass(frozen=True)
class RoutedEntry:
    """One routed name (fully qualified, trailing dot) and the active nodes behind it."""

    name: str
    ttl: int
    nodes: tuple[MapNode, ...]
    answers: int = 1  # how many of the nearest nodes a located client is given

    @property
    def ipv4(self) -> tuple[str, ...]:
        return tuple(node.ipv4 for node in self.nodes if node.ipv4)

    @property
    def ipv6(self) -> tuple[str, ...]:
        return tuple(node.ipv6 for node in self.nodes if node.ipv6)


@dataclass(frozen=True)
class DnsMap:
    """Everything the zone is rendered from. Built fresh from inventory + states every time."""

    domain: str  # zone name, fully qualified with trailing dot
    routed: tuple[RoutedEntry, ...]
    nodes: tuple[MapNode, ...] = field(default=())

    @property
    def active(self) -> tuple[MapNode, ...]:
        return tuple(node for node in self.nodes if node.active)

    def node(self, name: str) -> MapNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    @property
    def max_ttl(self) -> int:
        return max((entry.ttl for entry in self.routed), default=0)


def fqdn(name: str) -> str:
    return name if name.endswith(".") else name + "."


def build_map(fleet: Fleet, store: StateStore) -> DnsMap:
    """Given the fleet and the recorded node states, return the map.

    Every routed name is served by every active node (the fleet is made of identical clones);
    the choice among them per client is left to the LUA program (nearest by great circle).
    """
    nodes: list[MapNode] = []
    for name in sorted(fleet.nodes):
        node = fleet.nodes[name]
        region = fleet.regions[node.region]
        record = store.get(name)
        nodes.append(
            MapNode(
                name=name,
                region=node.region,
                state=record.state if record else UNKNOWN_STATE,
                since=record.since if record else None,
                actor=record.actor if record else "",
                reason=record.reason if record else "",
                ipv4=node.ipv4,
                ipv6=node.ipv6,
                latitude=region.latitude,
                longitude=region.longitude,
            )
        )
    active = tuple(node for node in nodes if node.active and node.addresses)
    domain = fqdn(fleet.domain)
    routed = tuple(
        RoutedEntry(name=f"{entry.name}.{domain}", ttl=entry.ttl, nodes=active,
                    answers=entry.answers)
        for entry in fleet.routed
    )
    return DnsMap(domain=domain, routed=routed, nodes=tuple(nodes))
