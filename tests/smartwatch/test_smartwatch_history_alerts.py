"""Findings judged against each disk's history, and the alerts that follow from them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from smartwatch_replay import RECORDINGS, ReplayedMachine

from smartwatch.agent import run_check
from smartwatch.alerts import Notice
from smartwatch.config import AlertConfig, Config, DrainConfig
from smartwatch.history import History

pytestmark = pytest.mark.unit

HOUR = 3600.0


class CapturingNotifier:
    def __init__(self) -> None:
        self.sent: list[Notice] = []
        self.working = True

    def send(self, notice: Notice) -> bool:
        if self.working:
            self.sent.append(notice)
        return self.working

    def kinds(self) -> list[tuple[str, str]]:
        return [(notice.kind, notice.key.split(":", 1)[-1]) for notice in self.sent]


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def variant(tmp_path: Path, name: str, base: str, edits: dict[str, str]) -> Path:
    """A copy of recording `base` with text replaced, for a disk whose counters change."""
    folder = tmp_path / name
    folder.mkdir()
    for source in (RECORDINGS / base).iterdir():
        text = source.read_text()
        for old, new in edits.items():
            text = text.replace(old, new)
        (folder / source.name).write_text(text)
    return folder


REALLOCATED_ZERO = "Pre-fail  Always       -       0\n  7 Seek_Error_Rate"


def reallocated(count: int) -> dict[str, str]:
    return {REALLOCATED_ZERO: f"Pre-fail  Always       -       {count}\n  7 Seek_Error_Rate"}


@pytest.fixture
def setup(tmp_path: Path, machine: ReplayedMachine) -> tuple[Config, CapturingNotifier, Clock]:
    config = Config(
        node="fsn-1", state_db=str(tmp_path / "state.sqlite"), smartctl=str(machine.smartctl),
        mdstat=str(tmp_path / "no-mdstat"), alerts=AlertConfig(reminder_hours=24),
        drain=DrainConfig(url="", confirm_delay_seconds=0),
    )
    return config, CapturingNotifier(), Clock()


def check(config: Config, notifier: CapturingNotifier, clock: Clock) -> list[tuple[str, str]]:
    before = len(notifier.sent)
    run_check(config, notifier=notifier, clock=clock, sleep=lambda seconds: None)
    return [(n.kind, n.key.split(":", 1)[-1]) for n in notifier.sent[before:]]


def test_healthy_disk_checked_every_hour_sends_nothing(setup, machine) -> None:
    config, notifier, clock = setup
    machine.use("healthy_sata_hdd")
    for _ in range(3):
        assert check(config, notifier, clock) == []
        clock.now += HOUR


def test_stable_nonzero_count_is_reported_once_not_every_hour(setup, machine, tmp_path) -> None:
    config, notifier, clock = setup
    machine.use(variant(tmp_path, "eight", "healthy_sata_hdd", reallocated(8)))
    assert check(config, notifier, clock) == [("new", "ata_5")]
    for _ in range(5):
        clock.now += HOUR
        assert check(config, notifier, clock) == []


def test_new_increase_of_a_stable_count_alerts_again(setup, machine, tmp_path) -> None:
    config, notifier, clock = setup
    machine.use(variant(tmp_path, "eight", "healthy_sata_hdd", reallocated(8)))
    check(config, notifier, clock)
    clock.now += HOUR
    assert check(config, notifier, clock) == []
    machine.use(variant(tmp_path, "twelve", "healthy_sata_hdd", reallocated(12)))
    clock.now += HOUR
    assert check(config, notifier, clock) == [("worse", "ata_5")]
    assert "grew from 8 to 12" in notifier.sent[-1].body


def test_increase_after_the_event_window_is_a_new_finding(setup, machine, tmp_path) -> None:
    config, notifier, clock = setup
    config = replace(config, alerts=AlertConfig(reminder_hours=1000))
    machine.use(variant(tmp_path, "eight", "healthy_sata_hdd", reallocated(8)))
    check(config, notifier, clock)
    clock.now += 8 * 24 * HOUR  # past the 7-day window: the finding cleared
    assert check(config, notifier, clock) == [("recovered", "ata_5")]
    machine.use(variant(tmp_path, "nine", "healthy_sata_hdd", reallocated(9)))
    clock.now += HOUR
    assert check(config, notifier, clock) == [("new", "ata_5")]


def test_persisting_condition_sends_a_reminder_after_the_interval_only(setup, machine) -> None:
    config, notifier, clock = setup
    machine.use("failed_selftest")
    assert check(config, notifier, clock) == [("new", "selftest")]
    clock.now += 23 * HOUR
    assert check(config, notifier, clock) == []
    clock.now += HOUR
    assert check(config, notifier, clock) == [("reminder", "selftest")]
    clock.now += HOUR
    assert check(config, notifier, clock) == []


def test_cleared_condition_sends_exactly_one_recovery_notice(setup, machine) -> None:
    config, notifier, clock = setup
    machine.use("failed_selftest")
    check(config, notifier, clock)
    machine.use("healthy_sata_hdd")  # a newer self-test passed
    clock.now += HOUR
    assert check(config, notifier, clock) == [("recovered", "selftest")]
    clock.now += HOUR
    assert check(config, notifier, clock) == []


def test_alert_that_could_not_be_sent_is_retried_next_run(setup, machine) -> None:
    config, notifier, clock = setup
    machine.use("failed_selftest")
    notifier.working = False
    assert check(config, notifier, clock) == []
    notifier.working = True
    clock.now += HOUR
    assert check(config, notifier, clock) == [("new", "selftest")]


def test_many_findings_at_once_are_folded_into_one_summary(setup, machine) -> None:
    config, notifier, clock = setup
    config = replace(config, alerts=AlertConfig(max_per_run=3))
    machine.use("nvme_critical")  # five findings
    sent = check(config, notifier, clock)
    assert len(sent) == 3
    assert sent[-1] == ("summary", "summary")
    assert notifier.sent[0].severity == "critical"
    clock.now += HOUR
    assert check(config, notifier, clock) == []


def test_history_survives_between_runs_in_the_sqlite_file(setup, machine, tmp_path) -> None:
    config, notifier, clock = setup
    machine.use(variant(tmp_path, "eight", "healthy_sata_hdd", reallocated(8)))
    check(config, notifier, clock)
    history = History(config.state_db)
    try:
        counters = history.counters("WS10SM2A")
        assert counters["ata_5"].value == 8
        assert history.findings()["WS10SM2A:ata_5"].last_alert_at == clock.now
    finally:
        history.close()


def test_report_only_check_writes_no_state_and_sends_nothing(setup, machine) -> None:
    config, notifier, clock = setup
    machine.use("failed_selftest")
    result = run_check(config, notifier=notifier, clock=clock, report_only=True)
    assert result.status == "critical"
    assert notifier.sent == []
    assert not Path(config.state_db).exists()


PENDING_ZERO = "Old_age   Always       -       0\n198 Offline_Uncorrectable"


def pending(count: int) -> dict[str, str]:
    return {PENDING_ZERO: f"Old_age   Always       -       {count}\n198 Offline_Uncorrectable"}


def test_pending_sectors_stay_a_finding_while_nonzero_and_recover_only_at_zero(
        setup, machine, tmp_path) -> None:
    config, notifier, clock = setup
    config = replace(config, alerts=AlertConfig(reminder_hours=1000))
    machine.use(variant(tmp_path, "three", "healthy_sata_hdd", pending(3)))
    assert check(config, notifier, clock) == [("new", "ata_197")]
    clock.now += 8 * 24 * HOUR  # past the event window: those sectors are still unreadable
    assert check(config, notifier, clock) == []
    history = History(config.state_db)
    stored = history.findings()["WS10SM2A:ata_197"]
    history.close()
    assert stored.severity == "warning"
    assert "pending sectors (SMART 197) still at 3" in stored.reason
    # A drop that stays above zero is still a standing finding, not a recovery.
    machine.use(variant(tmp_path, "two", "healthy_sata_hdd", pending(2)))
    clock.now += HOUR
    assert check(config, notifier, clock) == []
    # Growth raises the severity as before: 25 is past critical_at (20).
    machine.use(variant(tmp_path, "many", "healthy_sata_hdd", pending(25)))
    clock.now += HOUR
    assert check(config, notifier, clock) == [("worse", "ata_197")]
    assert notifier.sent[-1].severity == "critical"
    assert "grew from 2 to 25" in notifier.sent[-1].body
    machine.use("healthy_sata_hdd")  # remapped: back to zero
    clock.now += HOUR
    assert check(config, notifier, clock) == [("recovered", "ata_197")]


def test_standing_198_survives_the_event_window_too(setup, machine, tmp_path) -> None:
    config, notifier, clock = setup
    config = replace(config, alerts=AlertConfig(reminder_hours=1000))
    offline = {"Old_age   Offline      -       0\n199": "Old_age   Offline      -       4\n199"}
    machine.use(variant(tmp_path, "offline", "healthy_sata_hdd", offline))
    assert check(config, notifier, clock) == [("new", "ata_198")]
    clock.now += 30 * 24 * HOUR
    assert check(config, notifier, clock) == []
    history = History(config.state_db)
    assert "WS10SM2A:ata_198" in history.findings()
    history.close()
