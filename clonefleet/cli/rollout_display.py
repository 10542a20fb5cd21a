"""What an operator sees while `clonefleet update` runs, and its final report.

On a terminal (stderr): a live table of the current batch, one row per node with its step,
status and the step's latest detail, above the lines already final (batches begun, steps
done, waits, failures). Otherwise, and with --json: one timestamped line per event on stderr.
The final report goes to stdout (a table, or the JSON document).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Column
from rich.text import Text

from clonefleet.cli.display import make_table, print_table, status_text

if TYPE_CHECKING:
    from clonefleet.rollout.report import RolloutReport
    from clonefleet.rollout.run import Event


def _line(event: Event) -> str | None:
    if event.kind == "plan":
        return event.detail
    if event.kind == "batch":
        label = "resuming nodes left out of DNS" if event.batch == 0 else f"batch {event.batch}"
        return f"{label}: {', '.join(event.nodes)}"
    if event.kind == "step":
        if event.status == "start":
            return f"{event.node}: {event.step} …"
        return f"{event.node}: {event.step} {event.status}" + (
            f": {event.detail}" if event.detail else "")
    if event.kind == "node":
        return f"{event.node}: updated"
    if event.kind == "waiting":
        return f"waiting (no node can go): {event.detail}"
    if event.kind == "stopping":
        return f"stopping: {event.detail}"
    if event.kind == "halt":
        return f"halted ({event.status}): {event.detail}"
    if event.kind == "note":
        return (f"{event.node}: " if event.node else "") + event.detail
    return None


class PlainEvents:
    """Timestamped lines on stderr: for logs, pipes and --json."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, event: Event) -> None:
        line = _line(event)
        if line is not None:
            click.echo(f"[{time.monotonic() - self.started:7.1f}s] {line}", err=True)

    def close(self) -> None:
        pass


@dataclass
class _Row:
    node: str
    step: str = "waiting"
    status: str = ""
    detail: str = ""


class LiveEvents:
    """A rich live table of the current batch on a terminal."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.started = time.monotonic()
        self.rows: dict[str, _Row] = {}
        self.title = ""
        self.live = Live(self._render(), console=console, refresh_per_second=4,
                         transient=False)
        self.live.start()

    def _render(self) -> Group:
        table = make_table(["NODE", "STEP", "STATUS", "DETAIL"],
                           [(row.node, row.step,
                             status_text(row.status or "…", good=("done",),
                                         bad=("failed", "stopped")),
                             row.detail[:120]) for row in self.rows.values()],
                           terminal=True)
        elapsed = f"{time.monotonic() - self.started:.0f} s"
        return Group(Text(f"{self.title}  ({elapsed})", style="bold"), table)

    def __call__(self, event: Event) -> None:
        line = _line(event)
        if event.kind == "batch":
            self.title = line or ""
            self.rows = {node: _Row(node) for node in event.nodes}
        elif event.kind == "step" and event.node in self.rows:
            self.rows[event.node] = _Row(event.node, event.step, event.status
                                         if event.status != "start" else "running",
                                         event.detail)
        if line is not None and not (event.kind == "step" and event.status == "start"):
            self.live.console.print(Text(line))
        self.live.update(self._render())

    def close(self) -> None:
        if self.live.is_started:
            self.live.stop()


def event_display(as_json: bool) -> PlainEvents | LiveEvents:
    console = Console(stderr=True, highlight=False)
    if not as_json and console.is_terminal and not console.is_dumb_terminal:
        return LiveEvents(console)
    return PlainEvents()


def _dns_time(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.0f} s"


def show_report(report: RolloutReport) -> None:
    rows = []
    for node in report.nodes:
        packages = "\n".join(node.packages) or "-"
        why = (f"{node.failed_step}: " if node.failed_step else "") + node.reason
        rows.append((node.node, node.region,
                     status_text(node.result, good=("done",), bad=("failed", "stopped")),
                     packages, "yes" if node.rebooted else "no",
                     _dns_time(node.out_of_dns_seconds), why or "-"))
    click.echo("")
    print_table(["NODE", "REGION", "RESULT", "PACKAGES UPGRADED", "REBOOTED",
                 Column("OUT OF DNS", justify="right"), "WHY"], rows)
    click.echo(report.summary())
