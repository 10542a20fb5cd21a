"""A finished rollout's orchestration overhead, read back from what it recorded: pure.

Two ratios. `ratio_to_sum`: the wall time ÷ the sum of every node's unavoidable work (its
upgrade and reboot; the reboot step holds the node's boot, its unlock through Dropbear and
sshd's return): below 1 when batches update nodes side by side. `ratio`: the wall time ÷ the
critical path, per batch the slowest node's upgrade and reboot, batches one after the other:
1.0 would be an orchestrator costing nothing (no drain wait, no health check, no undrain,
no gaps).

Batches are read back from the nodes' progress: a batch starts only once every node of the
one before it has ended, so a node whose drain began before the current batch's last node
ended belongs to that batch. Meant for a rollout that ran to its end in one go (a resumed
one's step times do not add up to its wall time).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from clonefleet.errors import ClonefleetError
from clonefleet.rollout.progress import REBOOT, UPGRADE, Progress


@dataclass(frozen=True)
class Overhead:
    wall: float  # the run's start → its last node's last step
    work: float  # every node's upgrade + reboot, summed
    unavoidable: float  # per batch, the slowest node's upgrade + reboot, summed
    batches: tuple[tuple[str, ...], ...]

    @property
    def ratio(self) -> float:
        return self.wall / self.unavoidable if self.unavoidable > 0 else float("inf")

    @property
    def ratio_to_sum(self) -> float:
        return self.wall / self.work if self.work > 0 else float("inf")


def orchestration_overhead(started_at: float, progress: Mapping[str, Progress]) -> Overhead:
    """`progress`: the nodes' progress in one run (`PROGRESS_FACT`), `started_at` the run's
    start (`RunRecord.started_at`). Nodes that did not finish are left out."""
    spans = sorted((entry.left_dns_at, entry.left_dns_at + sum(entry.seconds.values()), node,
                    entry.seconds.get(UPGRADE, 0.0) + entry.seconds.get(REBOOT, 0.0))
                   for node, entry in progress.items()
                   if entry.result == "done" and entry.left_dns_at is not None)
    if not spans:
        raise ClonefleetError("no node finished that rollout: nothing to measure")
    batches: list[list[tuple[str, float]]] = []
    batch_end = float("-inf")
    for start, end, node, work in spans:
        if not batches or start >= batch_end:
            batches.append([])
            batch_end = end
        batches[-1].append((node, work))
        batch_end = max(batch_end, end)
    wall = max(end for _, end, _, _ in spans) - started_at
    unavoidable = sum(max(work for _, work in batch) for batch in batches)
    return Overhead(wall, sum(work for _, _, _, work in spans), unavoidable,
                    tuple(tuple(node for node, _ in batch) for batch in batches))
