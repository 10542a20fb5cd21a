"""`clonefleet deploy --diff` on a terminal: per node, what would change, with file diffs.

Lines are never wrapped (a diff stays a diff when piped) and never read as rich markup (a
file may contain brackets); colours show on a terminal only.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.text import Text

from clonefleet.deploy import DiffResult, FileDiff, PlannedChange


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def node_lines(result: DiffResult) -> list[Text]:
    """The lines shown for one node."""
    if result.failed:
        reason = "; ".join(result.errors) or "could not connect"
        return [Text.assemble((result.node, "bold"), ": ",
                              ("could not compare", "bold red"), f": {reason}")]
    if not result.changes:
        return [Text.assemble((result.node, "bold"), ": ", ("nothing would change", "green"),
                              f" ({result.unchanged} unchanged)")]
    conditional = sum(1 for change in result.changes if change.conditional)
    more = f" ({conditional} more if needed)" if conditional else ""
    lines = [Text.assemble(
        (result.node, "bold"), ": ",
        (f"{_plural(len(result.changes) - conditional, 'operation')} would change", "yellow"),
        f"{more}, {result.unchanged} unchanged")]
    for change in result.changes:
        lines.extend(_change_lines(change))
    return lines


def _change_lines(change: PlannedChange) -> list[Text]:
    condition = " (only if an earlier change needs it)" if change.conditional else ""
    lines = [Text.assemble("  ~ ", (change.operation, "bold"), condition)]
    for file in change.files:
        lines.extend(_file_lines(file))
    return lines


def _file_lines(file: FileDiff) -> list[Text]:
    if file.diff is None:
        what = "new file, " if file.created else ""
        return [Text(f"    {file.path or 'a file'}: {what}content differs (hidden: "
                     f"{file.hidden})", style="dim")]
    lines = []
    for line in file.diff.splitlines():
        style = ("bold" if line.startswith(("---", "+++")) else "cyan" if line.startswith("@@")
                 else "green" if line.startswith("+") else "red" if line.startswith("-")
                 else "")
        lines.append(Text(f"    {line}", style=style))
    return lines


def print_diff(results: Sequence[DiffResult], console: Console | None = None) -> None:
    """Every node's lines, then a one-line summary."""
    console = console or Console(highlight=False)
    for result in results:
        for line in node_lines(result):
            console.print(line, soft_wrap=True)
    changing = [result.node for result in results if result.changes and not result.failed]
    summary = (f"would change {', '.join(changing)}" if changing
               else "nothing would change")
    console.print(Text(f"{_plural(len(results), 'node')} compared: {summary}"),
                  soft_wrap=True)
