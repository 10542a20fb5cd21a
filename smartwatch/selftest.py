"""Start short and long self-tests on a schedule, like smartd's `-s` option.

The hourly timer runs the check; when the local hour matches the schedule and no test of that
kind was started on that disk in the last 20 hours (or 6 days for long tests) and none is
running, a background self-test is started. Results show up in the self-test log, which the
policy reads on later checks.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from pySMART import Device

from smartwatch.collect import DiskReading, RecordingSmartctl
from smartwatch.config import SelftestConfig
from smartwatch.history import History

MIN_GAP = {"short": 20 * 3600, "long": 6 * 24 * 3600}


@dataclass(frozen=True)
class StartedTest:
    disk: str
    kind: str
    message: str
    started: bool


def due(schedule: SelftestConfig, when: datetime.datetime) -> list[str]:
    """Kinds of test the schedule asks for at `when` (local time)."""
    kinds: list[str] = []
    if not schedule.enabled:
        return kinds
    if when.weekday() == schedule.long_weekday and when.hour == schedule.long_hour:
        kinds.append("long")
    elif when.hour == schedule.short_hour:
        kinds.append("short")
    return kinds


def run_due(schedule: SelftestConfig, readings: list[DiskReading], history: History,
            smartctl_path: str, now: float) -> list[StartedTest]:
    when = datetime.datetime.fromtimestamp(now)
    started: list[StartedTest] = []
    for kind in due(schedule, when):
        for reading in readings:
            if reading.error or reading.selftest_running:
                continue
            last = history.selftest_started(reading.identity, kind)
            if last is not None and now - last < MIN_GAP[kind]:
                continue
            smartctl = RecordingSmartctl(smartctl_path)
            try:
                device = Device(reading.device, interface=reading.interface, smartctl=smartctl)
                code, message, _ = device.run_selftest(kind)
            except Exception as error:  # pySMART raises bare exceptions on odd output
                started.append(StartedTest(reading.identity, kind, str(error), False))
                continue
            # 0 started, 1 one is already running: either way the disk is being tested.
            ok = code in (0, 1)
            if ok:
                history.record_selftest(reading.identity, kind, now)
            started.append(StartedTest(reading.identity, kind, str(message), ok))
    return started
