"""Rollout batching (clonefleet.rollout.batches): limits per batch, per region and fleet-wide,
nodes already out of service, and the order of batches; with exhaustive loops over small
fleets checking every invariant."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from clonefleet.errors import ConfigError
from clonefleet.rollout.batches import NodeStatus, RegionLimits, make_batches

pytestmark = pytest.mark.unit


def fleet(*regions: tuple[str, int, list[str]]) -> tuple[dict[str, RegionLimits],
                                                          list[NodeStatus]]:
    """(region, min_active, [state per node]) → limits and nodes named REGION-1, REGION-2..."""
    limits = {name: RegionLimits(name, minimum) for name, minimum, _ in regions}
    nodes = [NodeStatus(f"{name}-{index}", name, state)
             for name, _, states in regions for index, state in enumerate(states, 1)]
    return limits, nodes


def test_defaults_update_one_node_at_a_time_alternating_regions() -> None:
    limits, nodes = fleet(("fsn", 1, ["active"] * 2), ("ash", 1, ["active"] * 2))
    plan = make_batches(limits, 1, nodes, [node.name for node in nodes])
    assert all(len(batch) == 1 for batch in plan.batches)
    assert sorted(plan.scheduled) == sorted(node.name for node in nodes)
    regions = [batch[0].split("-")[0] for batch in plan.batches]
    assert regions[0] != regions[1] and regions[2] != regions[3]
    assert plan.blocked == ()


def test_regions_proceed_in_parallel_within_the_batch_size() -> None:
    limits, nodes = fleet(("fsn", 1, ["active"] * 3), ("ash", 1, ["active"] * 3))
    plan = make_batches(limits, 1, nodes, [node.name for node in nodes], batch_size=2)
    assert [sorted(name.split("-")[0] for name in batch) for batch in plan.batches] == \
        [["ash", "fsn"]] * 3


def test_nodes_without_work_are_in_no_batch_and_not_blocked() -> None:
    limits, nodes = fleet(("fsn", 1, ["active"] * 3))
    plan = make_batches(limits, 1, nodes, ["fsn-2"])
    assert plan.batches == (("fsn-2",),)
    assert plan.blocked == ()


def test_region_at_its_minimum_blocks_each_node_with_one_line_reason() -> None:
    limits, nodes = fleet(("fsn", 2, ["active"] * 2), ("ash", 1, ["active"] * 2))
    plan = make_batches(limits, 1, nodes, [node.name for node in nodes])
    assert sorted(plan.scheduled) == ["ash-1", "ash-2"]
    reasons = {blocked.node: blocked.reason for blocked in plan.blocked}
    assert set(reasons) == {"fsn-1", "fsn-2"}
    assert reasons["fsn-1"] == ("fsn-1 waits: region fsn has 2 active node(s) and min_active 2:"
                                " updating one would leave 1")
    assert all("\n" not in reason for reason in reasons.values())


def test_a_smartwatch_drain_counts_against_the_region_limit() -> None:
    limits = {"fsn": RegionLimits("fsn", 1)}
    nodes = [NodeStatus("fsn-1", "fsn", "active"), NodeStatus("fsn-2", "fsn", "active"),
             NodeStatus("fsn-3", "fsn", "drained", reason="smartwatch: /dev/sda failing")]
    plan = make_batches(limits, 1, nodes, ["fsn-1", "fsn-2", "fsn-3"])
    assert plan.batches == ()
    reasons = {blocked.node: blocked.reason for blocked in plan.blocked}
    assert reasons["fsn-3"] == ("fsn-3 is drained (smartwatch: /dev/sda failing); only active "
                                "nodes are updated")
    assert reasons["fsn-1"] == (
        "fsn-1 waits: region fsn already has 1 node(s) out of service (fsn-3 drained "
        "(smartwatch: /dev/sda failing)), the limit is --max-unavailable-per-region 1")
    # A larger limit lets one more go, as the minimum still allows.
    wider = make_batches(limits, 1, nodes, ["fsn-1", "fsn-2"], max_unavailable_per_region=2,
                         batch_size=5)
    assert wider.batches == (("fsn-1",), ("fsn-2",))


def test_a_node_still_being_provisioned_does_not_count_as_out_of_service() -> None:
    limits = {"fsn": RegionLimits("fsn", 1)}
    nodes = [NodeStatus("fsn-1", "fsn", "active"), NodeStatus("fsn-2", "fsn", "active"),
             NodeStatus("fsn-3", "fsn", "installed", served=False)]
    plan = make_batches(limits, 1, nodes, ["fsn-1", "fsn-2"])
    assert plan.batches == (("fsn-1",), ("fsn-2",))


def test_a_region_below_its_minimum_stops_every_region() -> None:
    limits, nodes = fleet(("fsn", 2, ["active", "drained", "active"]),
                          ("ash", 1, ["active"] * 2))
    limits["fsn"] = RegionLimits("fsn", 3)
    plan = make_batches(limits, 1, nodes, ["ash-1", "ash-2"])
    assert plan.batches == ()
    assert plan.blocked[0].reason == (
        "ash-1 waits: region fsn has 2 active node(s), below its min_active 3 (out of "
        "service: fsn-2 drained)")


def test_min_active_total_blocks_the_whole_fleet() -> None:
    limits, nodes = fleet(("fsn", 1, ["active"] * 2), ("ash", 1, ["active"] * 2))
    plan = make_batches(limits, 4, nodes, ["fsn-1", "ash-1"], batch_size=2)
    assert plan.batches == ()
    assert {blocked.node for blocked in plan.blocked} == {"fsn-1", "ash-1"}
    assert "min_active_total 4" in plan.blocked[0].reason
    # Room for one below the total minimum: batches of one despite --batch-size 2.
    plan = make_batches(limits, 3, nodes, ["fsn-1", "ash-1"], batch_size=2)
    assert plan.batches == (("ash-1",), ("fsn-1",))


@pytest.mark.parametrize("option", ["batch_size", "max_unavailable_per_region"])
def test_limits_below_one_are_refused_in_one_line(option: str) -> None:
    limits, nodes = fleet(("fsn", 1, ["active"] * 2))
    with pytest.raises(ConfigError, match=r"^--[a-z-]+ must be 1 or more, not 0; use "):
        make_batches(limits, 1, nodes, ["fsn-1"], **{option: 0})


def test_unknown_node_is_refused() -> None:
    limits, nodes = fleet(("fsn", 1, ["active"] * 2))
    with pytest.raises(ConfigError, match="no state for node"):
        make_batches(limits, 1, nodes, ["nope-1"])


STATES = ["active", "active", "active", "drained", "draining", "installed"]


def _random_fleet(rng: random.Random) -> tuple[dict[str, RegionLimits], list[NodeStatus]]:
    regions = {}
    nodes = []
    for region in ["a", "b", "c"][:rng.randint(1, 3)]:
        count = rng.randint(1, 5)
        regions[region] = RegionLimits(region, rng.randint(0, count))
        for index in range(count):
            state = rng.choice(STATES)
            nodes.append(NodeStatus(f"{region}-{index}", region, state,
                                    served=state != "installed" or rng.random() < 0.5))
    return regions, nodes


def test_every_invariant_holds_on_many_small_fleets() -> None:
    rng = random.Random(11)
    checked = 0
    for _ in range(3000):
        regions, nodes = _random_fleet(rng)
        total_min = rng.randint(0, len(nodes))
        batch_size, max_out = rng.randint(1, 4), rng.randint(1, 3)
        work = [node.name for node in nodes if rng.random() < 0.8]
        plan = make_batches(regions, total_min, nodes, work, batch_size=batch_size,
                            max_unavailable_per_region=max_out)
        scheduled = plan.scheduled
        blocked = [entry.node for entry in plan.blocked]
        # Every node with work is in exactly one batch or blocked, never both.
        assert sorted(scheduled + blocked) == sorted(work)
        assert len(set(scheduled)) == len(scheduled)
        by_name = {node.name: node for node in nodes}
        active_total = sum(node.active for node in nodes)
        below = any(sum(node.active for node in nodes if node.region == region)
                    < limits.min_active for region, limits in regions.items())
        assert not (below and plan.batches)
        for batch in plan.batches:
            assert 0 < len(batch) <= batch_size
            assert all(by_name[name].active for name in batch)
            assert active_total - len(batch) >= total_min
            for region, limits in regions.items():
                members = [node for node in nodes if node.region == region]
                going = sum(by_name[name].region == region for name in batch)
                active = sum(node.active for node in members)
                out = sum(node.out_of_service for node in members)
                assert active - going >= limits.min_active
                assert going == 0 or out + going <= max_out
        # As few batches as the limits allow.
        if scheduled:
            per_region = {region: sum(by_name[name].region == region for name in scheduled)
                          for region in regions}
            per_batch = min(batch_size, active_total - total_min)
            bound = max(math.ceil(len(scheduled) / per_batch),
                        *(math.ceil(count / plan.region_capacity[region])
                          for region, count in per_region.items() if count))
            assert len(plan.batches) == bound
            checked += 1
        # A node is blocked only when its region or the fleet truly has no room for it.
        for entry in plan.blocked:
            node = by_name[entry.node]
            assert "\n" not in entry.reason and entry.node in entry.reason
            if node.active and not below:
                members = [other for other in nodes if other.region == node.region]
                room = min(sum(other.active for other in members)
                           - regions[node.region].min_active,
                           max_out - sum(other.out_of_service for other in members),
                           active_total - total_min)
                assert room <= 0
    assert checked > 300  # fleets where something could go at all


def test_batches_are_the_same_whatever_the_order_of_the_fleet() -> None:
    limits, nodes = fleet(("fsn", 1, ["active"] * 3), ("ash", 0, ["active"] * 2),
                          ("hel", 1, ["active"] * 2))
    work = sorted(node.name for node in nodes)
    expected = make_batches(limits, 1, nodes, work, batch_size=3)
    for order in itertools.islice(itertools.permutations(nodes), 50):
        assert make_batches(limits, 1, list(order), work, batch_size=3) == expected
