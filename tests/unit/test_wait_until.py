"""The shared polling helper: returns the first non-None result, treats transient errors as
"not yet", propagates others, and names what it waited for when time runs out."""

from __future__ import annotations

import pytest

from clonefleet.errors import StateError
from clonefleet.retry import TimedOut, wait_until
from clonefleet.ssh import ConnectionFailed


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_returns_first_result_and_counts_transient_errors_as_not_yet() -> None:
    clock = FakeClock()
    answers: list[object] = [None, ConnectionFailed("refused"), None, "running"]

    def check() -> str | None:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    assert wait_until(check, what="server", timeout=60, clock=clock,
                      sleep=clock.sleep) == "running"
    assert len(clock.sleeps) == 3
    assert all(0 < delay <= 10 for delay in clock.sleeps)


def test_other_errors_propagate_at_once() -> None:
    clock = FakeClock()

    def check() -> None:
        raise StateError("action failed")

    with pytest.raises(StateError):
        wait_until(check, what="action", timeout=60, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == []


def test_timeout_names_what_and_last_state_and_never_oversleeps() -> None:
    clock = FakeClock()
    with pytest.raises(TimedOut) as caught:
        wait_until(lambda: None, what="server 42 rescue", timeout=30, clock=clock,
                   sleep=clock.sleep, describe=lambda: "status initializing")
    message = str(caught.value)
    assert message.startswith("server 42 rescue: not done after 30 s")
    assert "last seen: status initializing" in message
    assert clock.now == pytest.approx(30)
    assert caught.value.exit_code == 4
