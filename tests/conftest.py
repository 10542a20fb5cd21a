"""Suite-wide collection order: the lab fleet module first, the OVH VM module last.

The lab fleet module is the long pole of a run (three emulated VMs provisioned once and
shared by its tests, about 40 minutes). xdist's `loadfile` (with --no-loadscope-reorder, as
scripts/test runs it) gives each worker one module, then the next module in collection
order as soon as fewer than three of its tests are pending. So the fleet module goes to
worker 1 and keeps it; worker 2 takes every unit and integration module, then the OVH
module (one VM), which so never boots beside the fleet's three while they provision.
"""

from __future__ import annotations

import pytest

FIRST = ("test_lab_fleet.py",)
LAST = ("test_provision_ovh.py",)


def _rank(item: pytest.Item) -> int:
    name = item.path.name
    if name in FIRST:
        return FIRST.index(name)
    if name in LAST:
        return len(FIRST) + 2 + LAST.index(name)
    return len(FIRST) + (1 if item.get_closest_marker("vm") is not None else 0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)
