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
    events = flush_spool(config, notifier=Notifier(), client=acknowledging, sleep=sleeps.append)
    assert [event.answer.outcome for event in events] == [ACK]
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
