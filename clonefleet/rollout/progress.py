"""What a rollout records to be resumed, and where a resumed rollout picks each node up: pure.

Two records in the state store, written as the rollout goes (never only at its end):
- the run (fleet fact `rollout_run`): its id, who started it, its options, the nodes it is
  to update in order, and its status (`running`, `halted-on-failure`,
  `halted-waiting`, `interrupted`, `done`);
- per node (node fact `rollout_progress`): the run's id, the steps done (in order), the step
  being run, what the upgrade installed, whether it rebooted, when the node left DNS, and the
  result (`running`, `done`, `failed` with the failed step and why).
Every step's outcome is also a step record (`store.record_step`, named `update: STEP`), the
history an operator reads with `clonefleet status NODE --history`.

Invariant: a node's steps are done in the order of `STEPS`, and a step is marked done only
after it finished; so a node picked up again (`next_steps`) redoes at most the one step it
was in, and every step is safe to redo (drain and undrain republish, the upgrade finishes an
interrupted dpkg first and installs nothing twice, the reboot step looks at the node before
rebooting it, the health check only reads).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from clonefleet.state import StateStore

RUN_FACT = "rollout_run"
PROGRESS_FACT = "rollout_progress"
STEP_PREFIX = "update: "

# A node's steps, in order. `reboot` covers reboot, unlock through Dropbear and sshd with
# its pinned key; when no reboot is needed it is done at once ("not needed").
DRAIN = "drain"
UPGRADE = "upgrade"
REBOOT = "reboot"
HEALTH = "health check"
UNDRAIN = "undrain"
STEPS = (DRAIN, UPGRADE, REBOOT, HEALTH, UNDRAIN)

RunStatus = Literal["running", "halted-on-failure", "halted-waiting", "interrupted", "done"]
NodeResult = Literal["running", "done", "failed"]


@dataclass(frozen=True)
class RunOptions:
    everything: bool = False
    batch_size: int = 1
    max_unavailable_per_region: int = 1
    max_failures: int = 0
    wait_seconds: float = 300.0  # how long a batch waits for a region back at its minimum


@dataclass(frozen=True)
class RunRecord:
    id: int
    started_at: float
    by: str
    options: RunOptions
    queue: tuple[str, ...]  # the nodes to update, in the plan's order
    status: RunStatus = "running"
    halt_reason: str = ""

    def as_fact(self) -> dict[str, Any]:
        return {**asdict(self), "queue": list(self.queue)}

    @classmethod
    def from_fact(cls, value: Any) -> RunRecord | None:
        try:
            return cls(int(value["id"]), float(value["started_at"]), str(value["by"]),
                       RunOptions(**value["options"]), tuple(value["queue"]),
                       value["status"], str(value.get("halt_reason", "")))
        except (TypeError, KeyError, ValueError):
            return None

    @property
    def finished(self) -> bool:
        return self.status == "done"


@dataclass(frozen=True)
class Progress:
    """One node's progress in one rollout."""

    run: int
    done: tuple[str, ...] = ()
    current: str = ""  # the step being run ("" between steps)
    result: NodeResult = "running"
    failed_step: str = ""
    error: str = ""
    packages: tuple[str, ...] = ()  # "name old → new", as the upgrade installed them
    reboot_reasons: tuple[str, ...] = ()
    rebooted: bool = False
    boot_id: str = ""  # the node's boot when the upgrade ran (a reboot changes it)
    left_dns_at: float | None = None  # when the drain began (wall clock)
    out_of_dns_seconds: float | None = None  # drain begun → back in every answer
    seconds: dict[str, float] = field(default_factory=dict)  # step → seconds

    def as_fact(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_fact(cls, value: Any) -> Progress | None:
        if not isinstance(value, Mapping):
            return None
        try:
            return cls(int(value["run"]), tuple(value.get("done", ())),
                       str(value.get("current", "")), value.get("result", "running"),
                       str(value.get("failed_step", "")), str(value.get("error", "")),
                       tuple(value.get("packages", ())),
                       tuple(value.get("reboot_reasons", ())),
                       bool(value.get("rebooted", False)), str(value.get("boot_id", "")),
                       value.get("left_dns_at"),
                       value.get("out_of_dns_seconds"), dict(value.get("seconds", {})))
        except (TypeError, KeyError, ValueError):
            return None

    def started(self, step: str) -> Progress:
        return replace(self, current=step, result="running", failed_step="", error="")

    def finished(self, step: str, seconds: float, **changes: Any) -> Progress:
        done = tuple(name for name in STEPS if name in self.done or name == step)
        return replace(self, done=done, current="", seconds={**self.seconds, step: seconds},
                       result="done" if step == STEPS[-1] else "running", **changes)

    def failed(self, step: str, error: str) -> Progress:
        return replace(self, current="", result="failed", failed_step=step, error=error)


@dataclass(frozen=True)
class Pickup:
    """Where a node is picked up: the steps left (none: nothing to do), or why it is not."""

    steps: tuple[str, ...]
    note: str = ""  # one line for the operator: why these steps, or why none


def remaining(done: Sequence[str]) -> tuple[str, ...]:
    """The steps after the last one done, in order."""
    last = max((STEPS.index(step) for step in done if step in STEPS), default=-1)
    return STEPS[last + 1:]


def next_steps(node: str, state: str, progress: Progress | None, run: int) -> Pickup:
    """Given a node's recorded state and its progress, the steps a rollout `run` still has
    to do on it. The recorded state wins over the progress where they disagree: an operator
    may have undrained or drained the node by hand after a crash."""
    mine = progress if progress is not None and progress.run == run else None
    if state == "active":
        if mine is not None and UNDRAIN in mine.done:
            return Pickup((), f"{node} is done")
        # Never drained by this rollout, or undrained by hand since: start over.
        return Pickup(STEPS, "" if mine is None or not mine.done else
                      f"{node} is active again (undrained by hand?); updating it from the start")
    if state in ("draining", "drained", "updating"):
        if mine is None:
            return Pickup((), f"{node} is {state} but not by this rollout; it is left alone")
        steps = remaining(mine.done)
        if state == "updating" and DRAIN not in mine.done:
            steps = remaining((DRAIN,))
        if not steps:  # all done but the state says otherwise: undrain again
            steps = (UNDRAIN,)
        what = (f"failed at {mine.failed_step} ({mine.error})" if mine.result == "failed"
                else f"stopped during {mine.current}" if mine.current
                else f"stopped after {mine.done[-1]}" if mine.done else "not started")
        return Pickup(steps, f"{node} {what}; continuing with {steps[0]}")
    return Pickup((), f"{node} is {state}; only active nodes (or nodes this rollout left "
                      "out of DNS) are updated")


def unfinished(progress: Mapping[str, Progress | None], states: Mapping[str, str],
               run: int) -> list[str]:
    """Nodes this run took out of DNS and has not brought back: they are finished first on
    resume, before any new node is drained."""
    return sorted(node for node, entry in progress.items()
                  if entry is not None and entry.run == run and UNDRAIN not in entry.done
                  and DRAIN in (*entry.done, entry.current)
                  and states.get(node) in ("draining", "drained", "updating"))


def last_run(store: StateStore, nodes: Iterable[str]) -> tuple[RunRecord | None,
                                                               dict[str, Progress]]:
    """The fleet's last recorded rollout and, among `nodes`, the progress of those it ran."""
    from clonefleet.state import FLEET_FACTS

    run = RunRecord.from_fact(store.get_fact(FLEET_FACTS, RUN_FACT))
    progress: dict[str, Progress] = {}
    if run is not None:
        for node in nodes:
            entry = Progress.from_fact(store.get_fact(node, PROGRESS_FACT))
            if entry is not None and entry.run == run.id:
                progress[node] = entry
    return run, progress
