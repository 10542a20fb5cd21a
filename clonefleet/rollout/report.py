"""A rollout's final report and its exit code: pure, no I/O.

Per node: the result, the packages the upgrade installed, whether it rebooted, how long it
was out of DNS, and, when it did not finish, the step and why. The report's status says how
the rollout ended; each ending has its own exit code (`EXIT_CODES`), documented in the
command's help and docs/rollout.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from clonefleet.errors import ClonefleetError
from clonefleet.rollout.progress import Progress

Status = Literal["done", "halted-on-failure", "halted-waiting", "interrupted"]
Result = Literal["done", "failed", "skipped", "not started", "stopped"]

EXIT_DONE = 0
EXIT_BAD_INPUT = 2
EXIT_LOCKED = 3  # `lock.RolloutLocked`
EXIT_HALTED_ON_FAILURE = 40
EXIT_HALTED_WAITING = 41
EXIT_INTERRUPTED = 42
EXIT_CODES = {"done": EXIT_DONE, "halted-on-failure": EXIT_HALTED_ON_FAILURE,
              "halted-waiting": EXIT_HALTED_WAITING, "interrupted": EXIT_INTERRUPTED}


@dataclass(frozen=True)
class NodeReport:
    node: str
    region: str
    result: Result
    packages: tuple[str, ...] = ()
    rebooted: bool = False
    out_of_dns_seconds: float | None = None
    failed_step: str = ""
    reason: str = ""  # why it failed, was skipped or not started

    @classmethod
    def from_progress(cls, node: str, region: str, progress: Progress | None,
                      result: Result | None = None, reason: str = "") -> NodeReport:
        if progress is None:
            return cls(node, region, result or "not started", reason=reason)
        if result is None:
            result = "done" if progress.result == "done" else \
                "failed" if progress.result == "failed" else "stopped"
        return cls(node, region, result, progress.packages, progress.rebooted,
                   progress.out_of_dns_seconds, progress.failed_step,
                   reason or progress.error)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "packages": list(self.packages)}


@dataclass(frozen=True)
class RolloutReport:
    run: int
    status: Status
    nodes: tuple[NodeReport, ...]
    batches: tuple[tuple[str, ...], ...] = ()  # as they ran
    seconds: float = 0.0
    halt_reason: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    @property
    def failed(self) -> list[str]:
        return [node.node for node in self.nodes if node.result == "failed"]

    def as_dict(self) -> dict[str, Any]:
        return {"run": self.run, "status": self.status, "exit_code": self.exit_code,
                "halt_reason": self.halt_reason or None,
                "batches": [list(batch) for batch in self.batches],
                "seconds": round(self.seconds, 1),
                "nodes": [node.as_dict() for node in self.nodes],
                "failed": self.failed, "notes": list(self.notes)}

    def summary(self) -> str:
        done = sum(node.result == "done" for node in self.nodes)
        line = (f"rollout {self.run}: {done} of {len(self.nodes)} node(s) updated in "
                f"{self.seconds:.0f} s, {len(self.batches)} batch(es)")
        if self.status != "done":
            line += f"; {self.status}: {self.halt_reason}"
        return line


class RolloutStopped(ClonefleetError):
    """The rollout ended before every node was updated; carries the report."""

    def __init__(self, report: RolloutReport, message: str) -> None:
        super().__init__(message)
        self.report = report
        self.exit_code = report.exit_code


def resume_hint(status: Status) -> str:
    if status == "interrupted":
        return "run `clonefleet update --resume` to continue where it stopped"
    if status == "halted-on-failure":
        return ("the failed node stays drained (its reason is recorded); fix it, then run "
                "`clonefleet update --resume` (it retries the failed node first)")
    if status == "halted-waiting":
        return ("bring the region back to its minimum (undrain or repair its nodes), then run "
                "`clonefleet update --resume`")
    return ""
