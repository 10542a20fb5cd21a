"""When unlockd may unlock a node that waits in its initramfs: the policy and the decision.

Both are pure (no store, no network, no clock of their own), so the fleet file loader validates
the policy and tests check every decision directly.

In the fleet file, a fleet-wide `[unlock]` table, and per region a `[regions.NAME.unlock]` table
whose keys override the fleet's:

    [unlock]
    unexpected = "after"        # "immediate" | "after" | "approve"
    after = "10 minutes"        # with "after": how long an unexpected reboot waits
    loop_unlocks = 3            # more unlocks than this within loop_window: held
    loop_window = "30 minutes"

An expected reboot (one recorded by whoever caused it, `boots.expect_reboot`) is unlocked at
once; an unexpected one as `unexpected` says. An operator's approval
(`clonefleet unlock --approve NODE`) given during the boot unlocks whatever the policy and
releases a hold. A node unlocked more than `loop_unlocks` times within `loop_window` is held
(not unlocked, reported) until approved: a node that reboots again and again is not fed its
passphrase again and again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

UNEXPECTED = ("immediate", "after", "approve")
POLICY_KEYS = {"unexpected", "after", "loop_unlocks", "loop_window"}
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|"
                         r"h|hours?)\s*$")
UNITS = {"s": 1, "m": 60, "h": 3600}

Problem = tuple[str, str, str]  # (dotted key, problem, fix)
Action = Literal["unlock", "wait", "hold"]


@dataclass(frozen=True)
class UnlockPolicy:
    unexpected: str = "immediate"
    after_seconds: float = 0.0
    loop_unlocks: int = 3
    loop_window_seconds: float = 1800.0

    def describe(self) -> str:
        if self.unexpected == "after":
            return f"unexpected reboots unlocked after {_human(self.after_seconds)}"
        if self.unexpected == "approve":
            return "unexpected reboots wait for `clonefleet unlock --approve`"
        return "unexpected reboots unlocked at once"

    def as_dict(self) -> dict[str, Any]:
        return {"unexpected": self.unexpected, "after_seconds": self.after_seconds,
                "loop_unlocks": self.loop_unlocks,
                "loop_window_seconds": self.loop_window_seconds}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> UnlockPolicy:
        return cls(str(value.get("unexpected", "immediate")),
                   float(value.get("after_seconds", 0.0)),
                   int(value.get("loop_unlocks", 3)),
                   float(value.get("loop_window_seconds", 1800.0)))


@dataclass(frozen=True)
class FleetUnlockPolicy:
    """The fleet's policy and each region's, where a region overrides it."""

    default: UnlockPolicy = UnlockPolicy()
    regions: Mapping[str, UnlockPolicy] = field(default_factory=dict)

    def for_region(self, region: str) -> UnlockPolicy:
        return self.regions.get(region, self.default)

    def as_dict(self) -> dict[str, Any]:
        return {"default": self.default.as_dict(),
                "regions": {name: policy.as_dict() for name, policy in self.regions.items()}}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> FleetUnlockPolicy:
        return cls(UnlockPolicy.from_dict(value.get("default", {})),
                   {str(name): UnlockPolicy.from_dict(policy)
                    for name, policy in dict(value.get("regions", {})).items()})


def _human(seconds: float) -> str:
    if seconds and seconds % 3600 == 0:
        return f"{seconds / 3600:g} hours"
    if seconds and seconds % 60 == 0:
        return f"{seconds / 60:g} minutes"
    return f"{seconds:g} seconds"


def parse_duration(value: Any) -> float | None:
    """"10 minutes", "90 s", "1 hour" or a number of seconds → seconds; None if malformed."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value >= 0 else None
    if not isinstance(value, str):
        return None
    match = DURATION_RE.match(value)
    if match is None:
        return None
    return float(match.group(1)) * UNITS[match.group(2)[0]]


def parse_policy(table: Mapping[str, Any], key: str,
                 base: UnlockPolicy | None = None) -> tuple[UnlockPolicy, list[Problem]]:
    """An `[unlock]` table (or a region's, over `base`) → the policy and every problem."""
    policy = base or UnlockPolicy()
    problems: list[Problem] = []
    for name in table:
        if name not in POLICY_KEYS:
            problems.append((f"{key}.{name}", "unknown key",
                             f"remove it or use one of: {', '.join(sorted(POLICY_KEYS))}"))
    if "unexpected" in table:
        unexpected = table["unexpected"]
        if unexpected not in UNEXPECTED:
            problems.append((f"{key}.unexpected", f"unknown policy {unexpected!r}",
                             f"use one of: {', '.join(UNEXPECTED)}"))
        else:
            policy = replace(policy, unexpected=unexpected)
    elif "after" in table:
        policy = replace(policy, unexpected="after")
    if "after" in table:
        seconds = parse_duration(table["after"])
        if seconds is None:
            problems.append((f"{key}.after", f"not a duration: {table['after']!r}",
                             "write e.g. after = \"10 minutes\""))
        else:
            policy = replace(policy, after_seconds=seconds)
    if policy.unexpected == "after" and "after" not in table and not policy.after_seconds:
        problems.append((f"{key}.after", "unexpected = \"after\" needs a delay",
                         "add e.g. after = \"10 minutes\""))
    if "loop_unlocks" in table:
        count = table["loop_unlocks"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            problems.append((f"{key}.loop_unlocks", f"expected a whole number >= 1, got "
                             f"{count!r}", "e.g. loop_unlocks = 3"))
        else:
            policy = replace(policy, loop_unlocks=count)
    if "loop_window" in table:
        seconds = parse_duration(table["loop_window"])
        if seconds is None or seconds <= 0:
            problems.append((f"{key}.loop_window", f"not a duration: {table['loop_window']!r}",
                             "write e.g. loop_window = \"30 minutes\""))
        else:
            policy = replace(policy, loop_window_seconds=seconds)
    return policy, problems


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    not_before: float | None = None  # "wait": the moment the policy allows the unlock


HOLD_ADVICE = "held until `clonefleet unlock --approve`"


def decide(policy: UnlockPolicy, *, first_seen: float, expected: bool,
           approved_at: float | None, recent_unlocks: Sequence[float],
           now: float, held: bool = False) -> Decision:
    """Given a boot first seen waiting at `first_seen`, whether it was expected, the latest
    operator approval (if any), the times of the node's earlier unlocks, and whether this
    boot is held already, say what to do.

    An approval counts only when given during this boot (at or after `first_seen`); it
    overrides every rule. A reboot loop holds even an expected reboot, and a held boot stays
    held until approved (the loop window sliding past old unlocks does not release it).
    """
    if approved_at is not None and approved_at >= first_seen:
        return Decision("unlock", "approved by an operator")
    if held:
        return Decision("hold", f"reboot loop: {HOLD_ADVICE}")
    window_start = now - policy.loop_window_seconds
    recent = [at for at in recent_unlocks if at >= window_start]
    if len(recent) >= policy.loop_unlocks:
        return Decision("hold", f"reboot loop: unlocked {len(recent)} times in the last "
                                f"{_human(policy.loop_window_seconds)}; {HOLD_ADVICE}")
    if expected:
        return Decision("unlock", "expected reboot")
    if policy.unexpected == "immediate":
        return Decision("unlock", "unexpected reboot; policy: unlock at once")
    if policy.unexpected == "after":
        due = first_seen + policy.after_seconds
        if now >= due:
            return Decision("unlock", f"unexpected reboot; policy: unlock after "
                                      f"{_human(policy.after_seconds)}, which have passed")
        return Decision("wait", f"unexpected reboot; policy: unlock after "
                                f"{_human(policy.after_seconds)}", not_before=due)
    return Decision("wait", "unexpected reboot; policy: waits for `clonefleet unlock "
                            "--approve`")
