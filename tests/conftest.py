"""Suite-wide collection order: lab VM modules first, in an order that balances two workers.

The VM modules are the long pole of a run (minutes each, under emulation). xdist's
`loadfile` (with --no-loadscope-reorder, as scripts/test runs it) gives each worker one
module, then the next module in collection order as soon as fewer than three of its tests
are pending: a worker busy with a one-test VM module already holds the next module in line.
So the order is: the lab fleet module (worker 1, the longest: three full-clone VMs and the
tests that share them), the several-nodes module (worker 2: two provisions in a row), the
single-disk module (queued behind the several-nodes one on worker 2, whose one test leaves a
slot free), then everything else, which fills in around them.
"""

from __future__ import annotations

import pytest

VM_ORDER = ("test_lab_fleet.py", "test_provision_many.py", "test_provision_single_disk.py")


def _rank(item: pytest.Item) -> int:
    if item.get_closest_marker("vm") is None:
        return len(VM_ORDER) + 1
    name = item.path.name
    return VM_ORDER.index(name) if name in VM_ORDER else len(VM_ORDER)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)
