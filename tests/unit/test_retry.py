"""The shared retry policy: what it retries, how long, and what it says when it gives up."""

from __future__ import annotations

import random

import pytest

from clonefleet.errors import HostKeyMismatchError, TimeoutError_
from clonefleet.retry import GaveUp, RetryPolicy, is_transient, retry
from clonefleet.ssh import AccessDenied, ConnectionFailed
from clonefleet.unlock import BadPassphrase, TooManyTries, UnlockNotReady

pytestmark = pytest.mark.unit


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def failing(errors: list[BaseException], result: str = "ok"):  # type: ignore[no-untyped-def]
    calls = []

    def attempt() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return result

    attempt.calls = calls  # type: ignore[attr-defined]
    return attempt


@pytest.mark.parametrize("error", [
    ConnectionFailed("cannot reach Dropbear: Error reading SSH protocol banner"),
    UnlockNotReady("busy, try again later"),
    EOFError(), ConnectionResetError(), ConnectionRefusedError(), TimeoutError()])
def test_network_hiccups_and_a_passphrase_prompt_not_up_yet_are_transient(
        error: BaseException) -> None:
    assert is_transient(error)


@pytest.mark.parametrize("error", [
    HostKeyMismatchError("changed key"), BadPassphrase("bad"), TooManyTries("tries"),
    AccessDenied("key refused"), TimeoutError_("vm"), ValueError("bug")])
def test_key_passphrase_and_programming_errors_are_final(error: BaseException) -> None:
    assert not is_transient(error)


def test_transient_errors_are_retried_until_the_attempt_succeeds() -> None:
    time = FakeTime()
    attempt = failing([EOFError(), ConnectionFailed("reset"), UnlockNotReady("later")])
    seen: list[int] = []
    result = retry(attempt, what="unlock n1", timeout=60, clock=time.clock, sleep=time.sleep,
                   on_retry=lambda number, error, delay: seen.append(number))
    assert result == "ok"
    assert len(attempt.calls) == 4 and seen == [1, 2, 3]
    assert len(time.slept) == 3


def test_a_final_error_propagates_on_the_first_attempt_without_waiting() -> None:
    time = FakeTime()
    attempt = failing([HostKeyMismatchError("not the key pinned at install time")])
    with pytest.raises(HostKeyMismatchError):
        retry(attempt, what="unlock n1", timeout=60, clock=time.clock, sleep=time.sleep)
    assert len(attempt.calls) == 1 and time.slept == []


def test_giving_up_names_what_how_long_how_often_and_the_last_error() -> None:
    time = FakeTime()

    def attempt() -> None:
        raise ConnectionFailed("cannot reach sshd at root@127.0.0.1:2022: "
                               "ConnectionRefusedError")

    with pytest.raises(GaveUp) as gave_up:
        retry(attempt, what="connect to n1 sshd", timeout=30, clock=time.clock,
              sleep=time.sleep, detail=lambda: "\n--- console ---")
    error = gave_up.value
    assert str(error).startswith("connect to n1 sshd: gave up after 30 s and ")
    assert str(error).endswith("attempts; last error: cannot reach sshd at "
                               "root@127.0.0.1:2022: ConnectionRefusedError\n--- console ---")
    assert error.exit_code == ConnectionFailed.exit_code == 11
    assert time.now - 1000.0 == pytest.approx(30)  # never sleeps past the deadline


def test_the_last_errors_exit_code_is_kept_unless_the_caller_names_one() -> None:
    time = FakeTime()
    with pytest.raises(GaveUp) as unlock_gave_up:
        retry(failing([UnlockNotReady("later")] * 100), what="u", timeout=20,
              clock=time.clock, sleep=time.sleep)
    assert unlock_gave_up.value.exit_code == 7
    with pytest.raises(GaveUp) as wait_gave_up:
        retry(failing([EOFError()] * 100), what="w", timeout=20, exit_code=9,
              clock=time.clock, sleep=time.sleep)
    assert wait_gave_up.value.exit_code == 9


def test_delays_grow_to_the_cap_with_bounded_jitter() -> None:
    policy = RetryPolicy(first=1, cap=10, factor=2, jitter=0.2)
    delays = policy.delays(random.Random(7))
    values = [next(delays) for _ in range(8)]
    bases = [1, 2, 4, 8, 10, 10, 10, 10]
    for value, base in zip(values, bases, strict=True):
        assert base * 0.8 <= value <= base * 1.2
