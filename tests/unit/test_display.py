"""The progress display in its three forms (live terminal lines, plain timestamped lines,
JSON lines) and rich tables, fed with the events a run over several nodes produces."""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console

from clonefleet.cli.display import (
    JsonLines,
    LiveLines,
    PlainLines,
    make_table,
    print_table,
    progress_display,
    render_plain,
)
from clonefleet.fleetrun import Event

pytestmark = pytest.mark.unit

T0 = 1_800_000_000.0
STEPS = ["create server", "boot rescue", "build node layer", "install", "boot from disk",
         "unlock", "health check", "deploy"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_events() -> list[Event]:
    """fsn-1 copies its image and ends deployed; hel-1 fails at its first step; ash-1 never
    gets a slot before the end of this excerpt."""
    return [
        Event("fsn-1", "start", T0, {"from_state": None, "steps": STEPS}),
        Event("hel-1", "start", T0, {"from_state": None, "steps": STEPS}),
        Event("fsn-1", "log", T0 + 0.1, {"message": "fsn-1: create server"}),
        Event("fsn-1", "step", T0 + 0.1, {"step": "create server"}),
        Event("hel-1", "log", T0 + 0.2, {"message": "hel-1: create server"}),
        Event("hel-1", "step", T0 + 0.2, {"step": "create server"}),
        Event("hel-1", "result", T0 + 0.9, {"ok": False, "state": None, "seconds": 0.9,
                                            "failed_step": "create server",
                                            "error": "HCLOUD_TOKEN is not set"}),
        Event("fsn-1", "log", T0 + 75.1, {"message": "fsn-1: install"}),
        Event("fsn-1", "step", T0 + 75.1, {"step": "install"}),
        Event("fsn-1", "log", T0 + 80.0, {"message": "install: partition disks"}),
        *[Event("fsn-1", "progress", T0 + 90 + percent,
                {"what": "copy image", "done": 8_600_000 * percent, "total": 860_000_000,
                 "percent": percent}) for percent in range(0, 43)],
    ]


def test_on_a_terminal_each_node_has_a_live_line_with_step_progress_and_elapsed() -> None:
    output = io.StringIO()
    console = Console(file=output, force_terminal=True, width=120)
    now = [T0]
    display = LiveLines(console, ["fsn-1", "hel-1", "ash-1"], clock=lambda: now[0])
    now[0] = T0 + 100.0
    with display:
        for event in run_events():
            display(event)
        screen = ANSI.sub("", output.getvalue())
        live = screen[screen.rindex("fsn-1"):]
        assert "4/8 install" in live
        assert "copy image 42% (361 MB of 860 MB)" in live
        assert "1:40" in live  # fsn-1 started 100 s ago
        assert re.search(r"hel-1\s+FAILED at create server after 0\.9 s: HCLOUD_TOKEN is not "
                         r"set", screen)
        assert re.search(r"ash-1\s+waiting for a free slot", screen)
        # Log lines scroll above the live lines, with the node named.
        assert "[   80.0s] fsn-1: install: partition disks" in screen
        display(Event("fsn-1", "result", T0 + 300, {"ok": True, "state": "deployed",
                                                    "seconds": 300.0}))
    final = ANSI.sub("", output.getvalue())
    assert re.search(r"fsn-1\s+deployed in 300\.0 s\s+5:00", final)


def test_off_a_terminal_one_node_prints_the_timestamped_lines_provision_always_printed(
) -> None:
    lines: list[str] = []
    display = PlainLines(["fsn-1"], write=lines.append, clock=lambda: T0)
    with display:
        for event in run_events():
            if event.node == "fsn-1":
                display(event)
    assert lines[:3] == ["[    0.1s] fsn-1: create server", "[   75.1s] fsn-1: install",
                         "[   80.0s] fsn-1: install: partition disks"]
    # The copy every 10 %, as before.
    assert lines[3:] == [f"[{90 + percent:7.1f}s] fsn-1: copy image: {percent}% of 860 MB"
                         for percent in (0, 10, 20, 30, 40)]


def test_off_a_terminal_several_nodes_also_get_a_start_and_an_end_line_each() -> None:
    lines: list[str] = []
    with PlainLines(["fsn-1", "hel-1"], write=lines.append, clock=lambda: T0) as display:
        for event in run_events():
            display(event)
    assert lines[0] == "[    0.0s] fsn-1: start, from ordered: " + " → ".join(STEPS)
    assert "[    0.9s] hel-1: FAILED at create server after 0.9 s: HCLOUD_TOKEN is not set" \
        in lines
    assert not any("\x1b[" in line for line in lines)


def test_with_json_every_event_is_one_json_object_per_line_naming_node_and_kind() -> None:
    lines: list[str] = []
    with JsonLines(write=lines.append) as display:
        for event in run_events():
            display(event)
    events = [json.loads(line) for line in lines]
    assert len(events) == len(run_events())
    assert all({"time", "node", "kind"} <= set(event) for event in events)
    assert {event["kind"] for event in events} == {"start", "log", "step", "result",
                                                   "progress"}
    progress = [event for event in events if event["kind"] == "progress"][-1]
    assert (progress["node"], progress["percent"], progress["done"], progress["total"]) == (
        "fsn-1", 42, 361_200_000, 860_000_000)
    [result] = [event for event in events if event["kind"] == "result"]
    assert (result["node"], result["ok"], result["failed_step"]) == (
        "hel-1", False, "create server")


def test_the_display_form_follows_json_and_whether_stderr_is_a_terminal() -> None:
    terminal = Console(file=io.StringIO(), force_terminal=True)
    pipe = Console(file=io.StringIO(), force_terminal=False)
    assert isinstance(progress_display(["a"], as_json=False, console=terminal), LiveLines)
    assert isinstance(progress_display(["a"], as_json=False, console=pipe), PlainLines)
    assert isinstance(progress_display(["a"], as_json=True, console=terminal), JsonLines)


def test_plain_tables_keep_every_cell_unwrapped_without_colour_or_trailing_blanks() -> None:
    reason = "operator [maintenance]: a long reason " + "x" * 150
    text = render_plain(make_table(["NODE", "STATE", "REASON"],
                                   [("fsn-1", "deployed", reason), ("ash-10", "-", "")],
                                   terminal=False))
    lines = text.splitlines()
    assert lines[0].split() == ["NODE", "STATE", "REASON"]
    assert lines[1] == f"fsn-1   deployed  {reason}"  # brackets are text, not markup
    assert lines[2] == "ash-10  -"
    assert "\x1b[" not in text


def test_tables_on_a_terminal_are_boxed_and_keep_the_same_cells() -> None:
    output = io.StringIO()
    print_table(["NODE", "STATE"], [("fsn-1", "deployed")],
                console=Console(file=output, force_terminal=True, width=80))
    screen = ANSI.sub("", output.getvalue())
    assert re.search(r"fsn-1\s+deployed", screen) and "─" in screen
