"""The agent's drain side without a control plane: confirmation, spool, backoff, answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from smartwatch_replay import ReplayedMachine

from smartwatch.agent import flush_spool, run_check
from smartwatch.alerts import Notice
from smartwatch.config import AlertConfig, Config, DrainConfig
from smartwatch.drain import ACK, REFUSE, REJECT, RETRY, DrainAnswer
from smartwatch.history import History

pytestmark = pytest.mark.unit


class StubClient:
    """Answers drain requests from a script of outcomes; the last one repeats."""

    def __init__(self, *outcomes: str) -> None:
        self.outcomes = list(outcomes)
        self.payloads: list[dict[str, Any]] = []

    def send(self, payload: dict[str, Any]) -> DrainAnswer:
        self.payloads.append(payload)
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        status = {ACK: 200, REFUSE: 409, REJECT: 401, RETRY: 503}[outcome]
        return DrainAnswer(outcome, status, {"result": outcome}, f"answer {status}")


class Notifier:
    def __init__(self) -> None:
        self.sent: list[Notice] = []

    def send(self, notice: Notice) -> bool:
        self.sent.append(notice)
        return True


@pytest.fixture
def config(tmp_path: Path, machine: ReplayedMachine) -> Config:
    return Config(node="fsn-1", state_db=str(tmp_path / "state.sqlite"),
                  smartctl=str(machine.smartctl), mdstat=str(tmp_path / "none"),
                  alerts=AlertConfig(),
                  drain=DrainConfig(url="http://127.0.0.1:9", attempts=4, backoff_seconds=2,
                                    max_backoff_seconds=5, confirm_delay_seconds=7))


def spool(config: Config) -> list[Any]:
    history = History(config.state_db)
    try:
        return history.all_spooled()
    finally:
        history.close()


def test_confirmed_critical_finding_spools_one_drain_request_naming_the_disk(
        config: Config, machine: ReplayedMachine) -> None:
    machine.use("failed_overall")
    client, sleeps = StubClient(ACK), []
    run_check(config, notifier=Notifier(), client=client, sleep=sleeps.append)
    assert sleeps == [7]  # the pause before the second reading
    assert len(client.payloads) == 1
    payload = client.payloads[0]
    assert payload["node"] == "fsn-1"
    assert "ST3250318AS serial 9VY1LMLV" in payload["reason"]
    assert {finding["check"] for finding in payload["findings"]} >= {"overall_health",
                                                                     "selftest"}
    assert [entry.status for entry in spool(config)] == ["acknowledged"]
    run_check(config, notifier=Notifier(), client=client, sleep=sleeps.append)
    assert len(client.payloads) == 1  # the same findings never ask twice


def test_critical_finding_not_seen_again_on_second_reading_warns_and_does_not_drain(
        config: Config, machine: ReplayedMachine) -> None:
    machine.use("failed_selftest")
    client, notifier = StubClient(ACK), Notifier()
    result = run_check(config, notifier=notifier, client=client,
                       sleep=lambda seconds: machine.use("healthy_sata_hdd"))
    assert [(f.check, f.severity) for f in result.findings] == [("selftest", "warning")]
    assert "not confirmed by a second reading" in result.findings[0].reason
    assert client.payloads == []
    assert spool(config) == []


def test_unanswered_request_is_retried_with_capped_exponential_backoff_and_kept(
        config: Config, machine: ReplayedMachine) -> None:
    machine.use("failed_selftest")
    client, sleeps = StubClient(RETRY), []
    run_check(config, notifier=Notifier(), client=client, sleep=sleeps.append)
    assert sleeps == [7, 2, 4, 5]
    [entry] = spool(config)
    assert (entry.status, entry.attempts) == ("pending", 4)
    acknowledging = StubClient(ACK)
    flushed = flush_spool(config, notifier=Notifier(), client=acknowledging,
                          sleep=sleeps.append)
    assert [event.answer.outcome for event in flushed.events] == [ACK]
    assert flushed.undelivered == []
    assert acknowledging.payloads[0]["request_id"] == entry.request_id
    assert [e.status for e in spool(config)] == ["acknowledged"]


def test_rejected_request_alerts_once_and_stays_spooled(
        config: Config, machine: ReplayedMachine) -> None:
    machine.use("failed_selftest")
    client, notifier = StubClient(REJECT), Notifier()
    run_check(config, notifier=notifier, client=client, sleep=lambda seconds: None)
    rejected = [n for n in notifier.sent if n.kind == "drain-rejected"]
    assert len(rejected) == 1 and "HTTP 401" in rejected[0].title
    assert len(client.payloads) == 1  # a rejection is not retried within the run
    flush_spool(config, notifier=notifier, client=client, sleep=lambda seconds: None)
    assert len([n for n in notifier.sent if n.kind == "drain-rejected"]) == 1
    assert [entry.status for entry in spool(config)] == ["pending"]


def test_refused_request_is_retried_by_later_checks_but_not_by_the_flush_timer(
        config: Config, machine: ReplayedMachine) -> None:
    machine.use("failed_selftest")
    client = StubClient(REFUSE)
    run_check(config, notifier=Notifier(), client=client, sleep=lambda seconds: None)
    flush_spool(config, notifier=Notifier(), client=client, sleep=lambda seconds: None)
    assert len(client.payloads) == 1
    run_check(config, notifier=Notifier(), client=client, sleep=lambda seconds: None)
    assert len(client.payloads) == 2


def test_without_a_drain_url_critical_findings_only_alert(
        config: Config, machine: ReplayedMachine, tmp_path: Path) -> None:
    machine.use("failed_selftest")
    quiet = Config(node="fsn-1", state_db=config.state_db, smartctl=config.smartctl,
                   mdstat=config.mdstat, drain=DrainConfig(url="", confirm_delay_seconds=0))
    notifier = Notifier()
    run_check(quiet, notifier=notifier, sleep=lambda seconds: None)
    assert [n.kind for n in notifier.sent] == ["new"]
    assert spool(quiet) == []


def test_operators_hear_about_the_disk_before_the_drain_is_attempted(
        config: Config, machine: ReplayedMachine) -> None:
    machine.use("failed_selftest")
    client = StubClient(RETRY)
    calls_when_alerted: list[int] = []

    class Watching(Notifier):
        def send(self, notice: Notice) -> bool:
            calls_when_alerted.append(len(client.payloads))
            return super().send(notice)

    run_check(config, notifier=Watching(), client=client, sleep=lambda seconds: None)
    assert calls_when_alerted == [0]
    assert len(client.payloads) == 4


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_control_plane_that_stays_down_is_loud_in_check_flush_and_after_the_alert_time(
        tmp_path: Path, machine: ReplayedMachine, caplog: pytest.LogCaptureFixture) -> None:
    # The real client against a closed loopback port: connection refused, every attempt.
    config = Config(node="fsn-1", state_db=str(tmp_path / "state.sqlite"),
                    smartctl=str(machine.smartctl), mdstat=str(tmp_path / "none"),
                    drain=DrainConfig(url=f"http://127.0.0.1:{closed_port()}", attempts=2,
                                      confirm_delay_seconds=0, timeout_seconds=5,
                                      undelivered_alert_minutes=30))
    machine.use("failed_selftest")
    clock, notifier = Clock(), Notifier()
    caplog.set_level("WARNING", logger="smartwatch")
    result = run_check(config, notifier=notifier, sleep=lambda seconds: None, clock=clock)
    [pending] = result.to_dict()["drain_pending"]
    assert pending["status"] == "pending" and pending["attempts"] == 2
    assert "refused" in pending["last_error"].lower()
    assert "ST2000NM000A-2J2100 serial WS10SM2A" in pending["reason"]
    assert f"drain request {pending['request_id']} not delivered" in caplog.text
    assert not [n for n in notifier.sent if n.kind == "drain-undelivered"]

    clock.now += 10 * 60
    flushed = flush_spool(config, notifier=notifier, sleep=lambda seconds: None, clock=clock)
    assert [entry.request_id for entry in flushed.undelivered] == [pending["request_id"]]
    assert not [n for n in notifier.sent if n.kind == "drain-undelivered"]

    clock.now += 25 * 60  # 35 minutes pending: past the configured 30
    flush_spool(config, notifier=notifier, sleep=lambda seconds: None, clock=clock)
    [page] = [n for n in notifier.sent if n.kind == "drain-undelivered"]
    assert page.severity == "critical"
    assert page.title == ("[CRITICAL] fsn-1: drain request not delivered for 35 min, disk "
                          "failing and node still serving")
    assert "refused" in page.body.lower()

    clock.now += 5 * 60  # paged once, not every flush
    flushed = flush_spool(config, notifier=notifier, sleep=lambda seconds: None, clock=clock)
    assert len(flushed.undelivered) == 1
    assert len([n for n in notifier.sent if n.kind == "drain-undelivered"]) == 1


def test_acknowledged_request_is_no_longer_undelivered(
        config: Config, machine: ReplayedMachine) -> None:
    machine.use("failed_selftest")
    result = run_check(config, notifier=Notifier(), client=StubClient(RETRY),
                       sleep=lambda seconds: None)
    assert len(result.undelivered) == 1
    flushed = flush_spool(config, notifier=Notifier(), client=StubClient(ACK),
                          sleep=lambda seconds: None)
    assert flushed.undelivered == []


def test_spool_written_before_the_undelivered_alert_existed_is_migrated(
        config: Config, machine: ReplayedMachine) -> None:
    import sqlite3

    old = sqlite3.connect(config.state_db)
    old.execute("CREATE TABLE drain_spool (request_id TEXT PRIMARY KEY, finding_key TEXT "
                "NOT NULL, payload TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT "
                "NULL DEFAULT 0, created_at REAL NOT NULL, answered_at REAL, last_error TEXT "
                "NOT NULL DEFAULT '', alerted INTEGER NOT NULL DEFAULT 0)")
    old.execute("INSERT INTO drain_spool (request_id, finding_key, payload, status, "
                "created_at) VALUES ('r1', 'k', '{}', 'pending', 1)")
    old.commit()
    old.close()
    [entry] = spool(config)
    assert (entry.request_id, entry.undelivered_alert_at) == ("r1", None)
