"""One retry policy for every wait and connection of the control plane.

A transient failure (a refused or reset connection, EOF or a timeout while reading the SSH
banner, a node that is not asking for its passphrase yet) is retried with capped, jittered
exponential backoff until a deadline. Anything else fails at once: a changed host key, a
rejected passphrase or key, a VM that stopped. When the deadline passes, the error names
what was tried, for how long, how often, and the last error, and keeps the last error's exit
code (11 unreachable, 7 unlock, ...) unless the caller says otherwise.

Errors declare themselves transient (`ClonefleetError.transient`); plain socket errors and
EOF from libraries count as transient too.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from clonefleet.errors import ClonefleetError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Delays between attempts: `first`, growing by `factor` up to `cap`, each +/- `jitter`."""

    first: float = 1.0
    cap: float = 10.0
    factor: float = 1.5
    jitter: float = 0.2

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        rng = rng or random.Random()
        delay = self.first
        while True:
            yield delay * (1 + rng.uniform(-self.jitter, self.jitter))
            delay = min(self.cap, delay * self.factor)


DEFAULT = RetryPolicy()
# pyinfra's connector retries a fixed number of times with delays drawn between
# DEFAULT.first and DEFAULT.cap: 8 retries wait about 45 s in all, like an sshd wait.
DEPLOY_CONNECT_TRIES = 8


def is_transient(error: BaseException) -> bool:
    """Whether waiting and trying again may help: our errors say so themselves; raw socket
    errors, timeouts and EOF from libraries (paramiko, socket) are transient."""
    if isinstance(error, ClonefleetError):
        return error.transient
    return isinstance(error, (OSError, EOFError))


class GaveUp(ClonefleetError):
    """A transient failure outlasted its deadline. `last` is the final error seen."""

    transient = False

    def __init__(self, what: str, seconds: float, attempts: int, last: BaseException,
                 exit_code: int | None = None, detail: str = "") -> None:
        self.what, self.seconds, self.attempts, self.last = what, seconds, attempts, last
        self.exit_code = exit_code if exit_code is not None else getattr(last, "exit_code", 11)
        tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
        super().__init__(f"{what}: gave up after {seconds:.0f} s and {tries}; last error: "
                         f"{last}{detail}")


def retry(attempt: Callable[[], T], *, what: str, timeout: float,
          policy: RetryPolicy = DEFAULT,
          transient: Callable[[BaseException], bool] = is_transient,
          on_retry: Callable[[int, BaseException, float], None] | None = None,
          exit_code: int | None = None, detail: Callable[[], str] | None = None,
          clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> T:
    """Call `attempt` until it returns, retrying transient errors until `timeout` seconds.

    A non-transient error propagates unchanged on the first occurrence. After the deadline,
    raises `GaveUp` (with `detail()` appended, e.g. a VM's console tail). `on_retry(number,
    error, delay)` is told about each failed attempt before the wait.
    """
    started = clock()
    deadline = started + timeout
    delays = policy.delays()
    attempts = 0
    while True:
        attempts += 1
        try:
            return attempt()
        except Exception as error:
            if not transient(error):
                raise
            last = error
        delay = next(delays)
        now = clock()
        if now >= deadline:
            raise GaveUp(what, now - started, attempts, last, exit_code,
                         detail() if detail else "") from None
        delay = min(delay, deadline - now)
        if on_retry is not None:
            on_retry(attempts, last, delay)
        sleep(delay)


class TimedOut(ClonefleetError):
    """A condition polled by `wait_until` did not come true in time."""

    transient = False

    def __init__(self, what: str, seconds: float, polls: int, last: str,
                 exit_code: int = 4) -> None:
        self.what, self.seconds, self.polls, self.last = what, seconds, polls, last
        self.exit_code = exit_code
        seen = f"; last seen: {last}" if last else ""
        super().__init__(f"{what}: not done after {seconds:.0f} s ({polls} checks){seen}")


POLL = RetryPolicy(first=1.0, cap=10.0, factor=1.5, jitter=0.1)


def wait_until(check: Callable[[], T | None], *, what: str, timeout: float,
               policy: RetryPolicy = POLL, describe: Callable[[], str] | None = None,
               transient: Callable[[BaseException], bool] = is_transient,
               exit_code: int = 4, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> T:
    """Poll `check` until it returns something other than None and return that.

    The one polling loop of the control plane: provider actions and tasks, servers reaching
    a status, ports answering. Transient errors raised by `check` count as "not yet";
    anything else propagates at once. After `timeout` seconds raises `TimedOut`, naming
    `what` and, if given, `describe()` (the last state seen).
    """
    started = clock()
    deadline = started + timeout
    delays = policy.delays()
    polls = 0
    while True:
        polls += 1
        try:
            result = check()
        except Exception as error:
            if not transient(error):
                raise
            result = None
        if result is not None:
            return result
        now = clock()
        if now >= deadline:
            raise TimedOut(what, now - started, polls, describe() if describe else "",
                           exit_code)
        sleep(min(next(delays), deadline - now))
