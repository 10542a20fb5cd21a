"""Which nodes a rollout updates together, and in which order: pure, no I/O.

Invariants, for every batch the rollout would run (each batch is whole again before the next
starts, so every batch is checked against the same starting point):
- at most `batch_size` nodes in it;
- per region, at most `max_unavailable_per_region` nodes out of service at once, counting
  those already out for any reason (drained by an operator or by smartwatch, draining, or
  left drained by an earlier failure): a region with one node out already and the default
  limit of 1 gives none;
- no region falls below its `min_active`, and the fleet not below `min_active_total`; while
  any region is below its minimum already (for any reason), no node is in any batch;
- only active nodes with something to do are in a batch; every other node of the plan has a
  one-line reason why it is not in any batch.
Regions proceed in parallel: a batch takes nodes from several regions when the limits allow,
the region with the most batches still ahead first (so the rollout needs no more batches than
its busiest region or its batch size force).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from clonefleet.errors import ConfigError

# States from which a node never counts as out of service: it serves (active), is gone for
# good (retired), or has not served yet (provisioning, before its first undrain).
IN_SERVICE = "active"
RETIRED = "retired"


@dataclass(frozen=True)
class RegionLimits:
    name: str
    min_active: int


@dataclass(frozen=True)
class NodeStatus:
    """What the batching needs to know about one node of the fleet."""

    name: str
    region: str
    state: str  # the recorded lifecycle state
    # The node has been active before (its history says so): out of service now, it counts
    # against its region's limit. A node still being provisioned does not.
    served: bool = True
    reason: str = ""  # why it is in that state (e.g. "smartwatch: disk /dev/sda failing")

    @property
    def active(self) -> bool:
        return self.state == IN_SERVICE

    @property
    def out_of_service(self) -> bool:
        return not self.active and self.state != RETIRED and self.served


@dataclass(frozen=True)
class Blocked:
    node: str
    reason: str  # one line


@dataclass(frozen=True)
class BatchPlan:
    batches: tuple[tuple[str, ...], ...]
    blocked: tuple[Blocked, ...] = ()
    # Per region: how many of its nodes a batch may take (0: none can go).
    region_capacity: Mapping[str, int] = field(default_factory=dict)

    @property
    def scheduled(self) -> list[str]:
        return [node for batch in self.batches for node in batch]


def check_limit(value: int, option: str) -> int:
    if value < 1:
        raise ConfigError(f"{option} must be 1 or more, not {value}; use {option} 1 to update "
                          "one node at a time")
    return value


def _describe(nodes: Iterable[NodeStatus]) -> str:
    return ", ".join(f"{node.name} {node.state}" + (f" ({node.reason})" if node.reason else "")
                     for node in nodes)


def make_batches(regions: Mapping[str, RegionLimits], min_active_total: int,
                 nodes: Sequence[NodeStatus], work: Iterable[str], *, batch_size: int = 1,
                 max_unavailable_per_region: int = 1) -> BatchPlan:
    """Given every node of the fleet (`nodes`, for the counts), the names of those with
    something to do (`work`, in the order to prefer within a region), and the limits, return
    the ordered batches and, for every node of `work` left out, why."""
    check_limit(batch_size, "--batch-size")
    check_limit(max_unavailable_per_region, "--max-unavailable-per-region")
    by_name = {node.name: node for node in nodes}
    wanted = list(dict.fromkeys(work))
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        raise ConfigError(f"no state for node(s) {', '.join(unknown)}; every node to update "
                          "must be one of the fleet's")
    total_active = sum(node.active for node in nodes)
    fleet_room = total_active - min_active_total
    # Nothing proceeds while any region is below its minimum, whatever put it there.
    below = []
    for region_name in sorted({node.region for node in nodes} | set(regions)):
        members = [node for node in nodes if node.region == region_name]
        active = sum(node.active for node in members)
        minimum = regions.get(region_name, RegionLimits(region_name, 1)).min_active
        if active < minimum:
            below.append(f"region {region_name} has {active} active node(s), below its "
                         f"min_active {minimum} (out of service: "
                         f"{_describe(node for node in members if not node.active) or 'none'})")
    capacity: dict[str, int] = {}
    region_reason: dict[str, str] = {}
    for region_name in sorted({by_name[name].region for name in wanted}):
        members = [node for node in nodes if node.region == region_name]
        limits = regions.get(region_name, RegionLimits(region_name, 1))
        active = sum(node.active for node in members)
        out = [node for node in members if node.out_of_service]
        by_minimum = active - limits.min_active
        by_limit = max_unavailable_per_region - len(out)
        capacity[region_name] = max(0, min(by_minimum, by_limit, batch_size))
        if by_minimum <= 0:
            region_reason[region_name] = (
                f"region {region_name} has {active} active node(s) and min_active "
                f"{limits.min_active}: updating one would leave {active - 1}"
                + (f" (out of service: {_describe(out)})" if out else ""))
        elif by_limit <= 0:
            region_reason[region_name] = (
                f"region {region_name} already has {len(out)} node(s) out of service "
                f"({_describe(out)}), the limit is --max-unavailable-per-region "
                f"{max_unavailable_per_region}")
    blocked: list[Blocked] = []
    queues: dict[str, list[str]] = {}
    for name in wanted:
        node = by_name[name]
        if not node.active:
            blocked.append(Blocked(name, f"{name} is {node.state}"
                                   + (f" ({node.reason})" if node.reason else "")
                                   + "; only active nodes are updated"))
        elif below:
            blocked.append(Blocked(name, f"{name} waits: {'; '.join(below)}"))
        elif fleet_room <= 0:
            blocked.append(Blocked(name, f"the fleet has {total_active} active node(s) and "
                                   f"min_active_total {min_active_total}: updating {name} "
                                   f"would leave {total_active - 1}"))
        elif capacity[node.region] <= 0:
            blocked.append(Blocked(name, f"{name} waits: {region_reason[node.region]}"))
        else:
            queues.setdefault(node.region, []).append(name)
    per_batch = min(batch_size, max(fleet_room, 0))
    batches: list[tuple[str, ...]] = []
    while any(queues.values()):
        batches.append(_next_batch(queues, capacity, per_batch))
    return BatchPlan(tuple(batches), tuple(blocked), capacity)


def _next_batch(queues: dict[str, list[str]], capacity: Mapping[str, int],
                per_batch: int) -> tuple[str, ...]:
    """Take the next batch from the regions' queues (in place). A region that would need
    more batches than the rollout has left gives what it must first; free places go to the
    regions with the most nodes left, so the rollout takes as few batches as possible."""
    remaining = {region: len(queue) for region, queue in queues.items() if queue}
    rounds = max(math.ceil(sum(remaining.values()) / per_batch),
                 *(math.ceil(count / capacity[region]) for region, count in remaining.items()))
    take = {region: max(0, count - capacity[region] * (rounds - 1))
            for region, count in remaining.items()}
    free = per_batch - sum(take.values())
    while free > 0:
        open_regions = [region for region, count in remaining.items()
                        if take[region] < min(capacity[region], count)]
        if not open_regions:
            break
        region = min(open_regions, key=lambda name: (take[name] - remaining[name], name))
        take[region] += 1
        free -= 1
    batch: list[str] = []
    for region in sorted(take):
        batch.extend(queues[region][:take[region]])
        del queues[region][:take[region]]
    return tuple(batch)
