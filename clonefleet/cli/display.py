"""How commands show progress and tables.

Progress goes to stderr and results to stdout, so a pipe gets the results alone and `--json`
keeps one document on stdout. Progress takes one of three forms:

- on a terminal, one live line per node (its step, the image copy's progress, elapsed time)
  under the log lines, which scroll above it;
- elsewhere, one timestamped line per log line (`[  75.1s] fsn-2: build node layer`), the
  image copy every 10 %;
- with `--json`, one JSON object per event and line (`time`, `node`, `kind`, its fields;
  see `clonefleet.fleetrun.Event`).

Tables are rich tables: boxed and coloured on a terminal; elsewhere plain columns (no colour,
no box, never wrapped, no trailing blanks) that keep the same content.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

import click
from rich import box
from rich.console import Console, RenderableType
from rich.live import Live
from rich.padding import Padding
from rich.spinner import Spinner
from rich.table import Column, Table
from rich.text import Text

from clonefleet.fleetrun import Event

# Wide enough that no table of ours is ever wrapped when it goes to a file or a pipe.
PLAIN_WIDTH = 100_000


class Display(Protocol):
    """Receives a run's events (one at a time) between `__enter__` and `__exit__`."""

    def __call__(self, event: Event) -> None: ...

    def __enter__(self) -> Display: ...

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None: ...


def _stderr_line(line: str) -> None:
    click.echo(line, err=True)


def _about(node: str, message: str) -> str:
    """A log line that says which node it is about (the installer's and the image build's
    own lines do not)."""
    return message if message.startswith(f"{node}:") else f"{node}: {message}"


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.0f} MB"


class PlainLines:
    """Timestamped lines, for a log file or a pipe. With one node the lines are those
    `provision` has always printed; with several, each node's start and end get a line too."""

    def __init__(self, nodes: Sequence[str], write: Callable[[str], None] = _stderr_line,
                 clock: Callable[[], float] = time.time) -> None:
        self.write = write
        self.several = len(nodes) > 1
        self.started = clock()
        self._shown: dict[str, int] = {}

    def __enter__(self) -> PlainLines:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        return None

    def _line(self, event: Event, text: str) -> None:
        self.write(f"[{event.at - self.started:7.1f}s] {text}")

    def __call__(self, event: Event) -> None:
        fields, node = event.fields, event.node
        if event.kind == "log":
            for line in str(fields["message"]).rstrip("\n").splitlines() or [""]:
                self._line(event, _about(node, line))
        elif event.kind == "progress":
            # Every 10 %, as before: a log file needs no more.
            percent, last = int(fields["percent"]), self._shown.get(node, -10)
            if percent >= last + 10 or fields["done"] == fields["total"]:
                self._shown[node] = percent
                self._line(event, f"{node}: {fields['what']}: {percent}% of "
                                  f"{_megabytes(int(fields['total']))}")
        elif event.kind == "start" and self.several:
            steps = " → ".join(fields.get("steps") or []) or "nothing to do"
            self._line(event, f"{node}: start, from {fields.get('from_state') or 'ordered'}: "
                              f"{steps}")
        elif event.kind == "result" and self.several:
            self._line(event, f"{node}: {_result_text(fields)}")
        # A step's start is already a log line of its own ("fsn-1: unlock").


def _result_text(fields: dict[str, Any] | Any) -> str:
    if fields.get("ok"):
        state = fields.get("state") or "done"
        if fields.get("skipped"):
            return f"nothing to do, {state}"
        return f"{state} in {fields.get('seconds', 0):.1f} s"
    where = f" at {fields['failed_step']}" if fields.get("failed_step") else ""
    return f"FAILED{where} after {fields.get('seconds', 0):.1f} s: {fields.get('error')}"


class JsonLines:
    """One JSON object per event and line, for scripts that follow a run as it goes."""

    def __init__(self, write: Callable[[str], None] = _stderr_line) -> None:
        self.write = write

    def __enter__(self) -> JsonLines:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        return None

    def __call__(self, event: Event) -> None:
        self.write(json.dumps(event.as_dict(), sort_keys=True, default=str))


@dataclass
class _NodeLine:
    node: str
    status: str = "waiting"  # waiting → running → ok | failed
    steps: list[str] = field(default_factory=list)
    step: str = ""
    what: str = ""
    done: int = 0
    total: int = 0
    began: float | None = None
    seconds: float | None = None
    outcome: str = ""


class LiveLines:
    """One live line per node on a terminal: its step (n/N), the image copy's progress and
    its elapsed time; log lines scroll above."""

    def __init__(self, console: Console, nodes: Sequence[str], *,
                 clock: Callable[[], float] = time.time, refresh_per_second: float = 4) -> None:
        self.console = console
        self.clock = clock
        self.started = clock()
        self.lines = {node: _NodeLine(node) for node in nodes}
        # The refresh thread renders while events arrive from the nodes' threads.
        self._lock = threading.Lock()
        self.live = Live(console=console, get_renderable=self.render,
                         refresh_per_second=refresh_per_second, transient=False)

    def __enter__(self) -> LiveLines:
        self.live.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.live.stop()

    def __call__(self, event: Event) -> None:
        fields, printed = event.fields, ""
        with self._lock:
            line = self.lines.setdefault(event.node, _NodeLine(event.node))
            if line.began is None:
                line.began, line.status = event.at, "running"
            if event.kind == "start":
                line.steps = list(fields.get("steps") or [])
            elif event.kind == "step":
                line.step, line.what, line.done, line.total = str(fields["step"]), "", 0, 0
            elif event.kind == "progress":
                line.what, line.done = str(fields["what"]), int(fields["done"])
                line.total = int(fields["total"])
            elif event.kind == "result":
                line.status = "ok" if fields.get("ok") else "failed"
                line.seconds = float(fields.get("seconds") or 0.0)
                line.outcome = _result_text(fields)
            elif event.kind == "log":
                message = str(fields["message"]).rstrip("\n")
                printed = "\n".join(f"[{event.at - self.started:7.1f}s] {_about(event.node, part)}"
                                    for part in message.splitlines() or [""])
        if printed:
            # Outside the lock: printing re-renders the live lines, which takes it.
            self.live.console.print(Text(printed), highlight=False, soft_wrap=True)
        self.live.refresh()

    def render(self) -> RenderableType:
        now = self.clock()
        table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1))
        table.add_column("status", width=1)
        table.add_column("node", style="bold", no_wrap=True)
        table.add_column("step", overflow="fold")
        table.add_column("elapsed", justify="right", no_wrap=True)
        with self._lock:
            for line in self.lines.values():
                table.add_row(*self._row(line, now))
        return table

    def _row(self, line: _NodeLine, now: float) -> tuple[RenderableType, str, Text, str]:
        status: RenderableType
        if line.status == "running":
            status = Spinner("dots", style="cyan")
        else:
            status = {"waiting": Text("·", style="dim"), "ok": Text("✓", style="green"),
                      "failed": Text("✗", style="bold red")}[line.status]
        if line.status in ("ok", "failed"):
            text = Text(line.outcome, style="red" if line.status == "failed" else "green")
        elif line.status == "waiting":
            text = Text("waiting for a free slot", style="dim")
        else:
            text = Text(_step_position(line))
            if line.what and line.total and line.done < line.total:
                percent = int(line.done * 100 / line.total)
                text.append(f"  {line.what} {percent}% ({_megabytes(line.done)} of "
                            f"{_megabytes(line.total)})", style="cyan")
        if line.seconds is not None:
            elapsed = line.seconds
        else:
            elapsed = now - line.began if line.began is not None else 0.0
        return status, line.node, text, _clock_text(elapsed) if line.began is not None else ""


def _step_position(line: _NodeLine) -> str:
    if not line.step:
        return "starting"
    if line.step in line.steps:
        return f"{line.steps.index(line.step) + 1}/{len(line.steps)} {line.step}"
    return line.step


def _clock_text(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}:{rest:02d}"


def progress_display(nodes: Sequence[str], *, as_json: bool,
                     console: Console | None = None) -> Display:
    """The display for a run over `nodes`: JSON lines with --json, live lines on a terminal,
    timestamped lines otherwise (all on stderr)."""
    if as_json:
        return JsonLines()
    console = console or Console(stderr=True, highlight=False)
    if console.is_terminal and not console.is_dumb_terminal:
        return LiveLines(console, nodes)
    return PlainLines(nodes)


# -- tables --------------------------------------------------------------------------------

def make_table(headers: Iterable[str | Column], rows: Iterable[Sequence[str | Text]], *,
               terminal: bool) -> Table:
    """A table of text cells (never read as rich markup: a reason may contain brackets)."""
    columns = [Column(header) if isinstance(header, str) else header for header in headers]
    if terminal:
        table = Table(*columns, box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    else:
        table = Table(*columns, box=None, show_edge=False, pad_edge=False, header_style="",
                      padding=(0, 1))
    for row in rows:
        table.add_row(*(cell if isinstance(cell, Text) else Text(str(cell)) for cell in row))
    return table


def render_plain(renderable: RenderableType) -> str:
    """Text without colour or cursor codes, unwrapped, each line without trailing blanks."""
    console = Console(file=io.StringIO(), width=PLAIN_WIDTH, color_system=None,
                      force_terminal=False, highlight=False, emoji=False)
    with console.capture() as captured:
        console.print(renderable)
    return "\n".join(line.rstrip() for line in captured.get().splitlines())


def print_table(headers: Iterable[str | Column], rows: Iterable[Sequence[str | Text]], *,
                indent: int = 0, console: Console | None = None) -> None:
    """Print a table on stdout: boxed on a terminal, plain columns otherwise."""
    console = console or Console(highlight=False)
    terminal = console.is_terminal and not console.is_dumb_terminal
    table = make_table(headers, rows, terminal=terminal)
    renderable: RenderableType = Padding(table, (0, 0, 0, indent)) if indent else table
    if terminal:
        console.print(renderable)
    else:
        click.echo(render_plain(renderable))


def status_text(text: str, good: Sequence[str] = ("ok",),
                bad: Sequence[str] = ("FAILED", "critical", "unreachable", "UNREACHABLE")
                ) -> Text:
    """A status cell: green when good, red when bad (colours show on a terminal only)."""
    style = "green" if text in good else "bold red" if text in bad else ""
    return Text(text, style=style)

