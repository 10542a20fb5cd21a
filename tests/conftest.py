"""Suite-wide collection order: lab VM modules first, in an order that balances two workers.

The VM modules are the long pole of a run (minutes each, under emulation). xdist's
`loadfile` (with --no-loadscope-reorder, as scripts/test runs it) gives each worker one
module, then the next module in collection order as soon as fewer than three of its tests
are pending: a worker busy with a one-test VM module already holds the next module in line.
So the order is: the RAID module (worker 1), the several-nodes module (worker 2, the longest:
two provisions in a row), the single-disk module (queued behind the RAID one on worker 1),
then everything else, which fills in around them.
"""

from __future__ import annotations

import pytest

VM_ORDER = ("test_provision_raid.py", "test_provision_many.py", "test_provision_single_disk.py")


def _rank(item: pytest.Item) -> int:
    if item.get_closest_marker("vm") is None:
        return len(VM_ORDER) + 1
    name = item.path.name
    return VM_ORDER.index(name) if name in VM_ORDER else len(VM_ORDER)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)
