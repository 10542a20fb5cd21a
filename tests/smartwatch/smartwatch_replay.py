"""Replay machinery shared by the smartwatch tests: a `smartctl` that plays recordings.

Imported by path (tests/smartwatch is put on sys.path by its conftest and by the integration
tests), like tests/pdns_fixture.py, because a `tests/smartwatch` package would shadow the real
`smartwatch` package.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"
RECORDINGS = FIXTURES / "recordings"
FAKE_SMARTCTL = Path(__file__).parent / "fake_smartctl.py"


class ReplayedMachine:
    """A `smartctl` program replaying one recordings folder; `use()` switches the folder."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.current_file = folder / "current"
        self.log = folder / "calls.log"
        self.smartctl = folder / "smartctl"
        self.smartctl.write_text(
            "#!/bin/sh\n"
            f'SMARTWATCH_REPLAY_DIR="$(cat {self.current_file})" '
            f"SMARTWATCH_REPLAY_LOG={self.log} "
            f'exec {sys.executable} -S {FAKE_SMARTCTL} "$@"\n'
        )
        self.smartctl.chmod(0o755)

    def use(self, recording: str | Path) -> ReplayedMachine:
        path = Path(recording)
        self.current_file.write_text(str(path if path.is_absolute() else RECORDINGS / path))
        return self

    @property
    def folder(self) -> Path:
        return Path(self.current_file.read_text())

    @property
    def mdstat(self) -> Path:
        """The machine's /proc/mdstat recording, or a path that does not exist."""
        return self.folder / "mdstat"

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


FIRST_CHECK = 1_700_000_000.0


def first_check(machine: ReplayedMachine, recording: str | Path) -> tuple[list[Any], list[Any]]:
    """Replay `recording` and judge it as the disks' first check: (readings, findings)."""
    from smartwatch.collect import collect
    from smartwatch.policy import PolicyConfig, advance_counters, evaluate, evaluate_arrays

    machine.use(recording)
    readings, arrays = collect(str(machine.smartctl), machine.mdstat)
    policy = PolicyConfig()
    findings = []
    for reading in readings:
        findings += evaluate(reading, advance_counters({}, reading, FIRST_CHECK), policy,
                             FIRST_CHECK)
    findings += evaluate_arrays(arrays, readings, policy)
    return readings, findings
