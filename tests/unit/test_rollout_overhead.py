"""The rollout's orchestration overhead, from recorded progress (clonefleet.rollout.overhead)."""

from __future__ import annotations

import pytest

from clonefleet.errors import ClonefleetError
from clonefleet.rollout.overhead import orchestration_overhead
from clonefleet.rollout.progress import Progress


def done(left_dns_at: float, drain: float, upgrade: float, reboot: float,
         health: float = 10.0, undrain: float = 0.5) -> Progress:
    return Progress(run=1, result="done", left_dns_at=left_dns_at,
                    seconds={"drain": drain, "upgrade": upgrade, "reboot": reboot,
                             "health check": health, "undrain": undrain})


def test_two_batches_read_back_from_when_each_node_left_dns() -> None:
    # The lab fleet run's shape: ash-1 beside fsn-1, then fsn-2 once both had ended.
    progress = {
        "fsn-1": done(1000.0, 35.0, 49.1, 418.5, 12.3, 0.3),   # ends at 1515.2
        "ash-1": done(1000.2, 35.0, 49.4, 391.3, 17.7, 0.5),   # ends at 1494.1
        "fsn-2": done(1516.0, 35.0, 42.4, 169.0, 10.8, 0.4),   # ends at 1773.6
    }
    result = orchestration_overhead(990.0, progress)
    assert result.batches == (("fsn-1", "ash-1"), ("fsn-2",))
    assert result.unavoidable == pytest.approx((49.1 + 418.5) + (42.4 + 169.0))
    assert result.wall == pytest.approx(1773.6 - 990.0)
    assert result.ratio == pytest.approx(result.wall / result.unavoidable)
    assert result.work == pytest.approx(49.1 + 418.5 + 49.4 + 391.3 + 42.4 + 169.0)
    assert result.ratio_to_sum == pytest.approx(result.wall / result.work)
    assert result.ratio_to_sum < 1 < result.ratio  # two nodes side by side in the first batch


def test_a_node_starting_after_the_whole_batch_ended_opens_the_next_batch() -> None:
    progress = {"a": done(0.0, 5, 10, 20), "b": done(1.0, 5, 10, 80),  # b ends at 106.5
                "c": done(50.0, 5, 10, 20),  # began while b ran: same batch
                "d": done(107.0, 5, 10, 20)}
    result = orchestration_overhead(0.0, progress)
    assert result.batches == (("a", "b", "c"), ("d",))
    assert result.unavoidable == pytest.approx(90 + 30)


def test_unfinished_nodes_are_left_out_and_nothing_finished_is_an_error() -> None:
    failed = Progress(run=1, result="failed", left_dns_at=0.0, seconds={"drain": 5.0})
    result = orchestration_overhead(0.0, {"a": done(0.0, 5, 10, 20), "b": failed})
    assert result.batches == (("a",),)
    with pytest.raises(ClonefleetError, match="no node finished"):
        orchestration_overhead(0.0, {"b": failed})
