"""One check: read the disks, judge them against their history, alert, drain, write metrics."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from smartwatch import __version__, metrics, nodecheck, selftest
from smartwatch.alerts import (
    DRAIN_REFUSED,
    DRAIN_REJECTED,
    DRAIN_UNDELIVERED,
    LogNotifier,
    Notice,
    Notifier,
    fold,
    plan,
    recoveries,
)
from smartwatch.collect import DiskReading, collect, reread
from smartwatch.config import Config
from smartwatch.drain import ACK, REFUSE, DrainClient, SpoolEvent, flush
from smartwatch.history import PENDING, REFUSED, History, SpoolEntry
from smartwatch.mdstat import MdArray
from smartwatch.policy import (
    CRITICAL,
    Finding,
    advance_counters,
    evaluate,
    evaluate_arrays,
    worst,
)

log = logging.getLogger("smartwatch")


@dataclass
class CheckResult:
    node: str
    checked_at: float
    readings: list[DiskReading]
    arrays: list[MdArray]
    findings: list[Finding]
    notices: list[Notice] = field(default_factory=list)
    notices_failed: list[Notice] = field(default_factory=list)
    drain_events: list[SpoolEvent] = field(default_factory=list)
    selftests: list[selftest.StartedTest] = field(default_factory=list)
    # Drain requests the control plane has not applied yet (pending or refused) after this run.
    undelivered: list[SpoolEntry] = field(default_factory=list)

    @property
    def status(self) -> str:
        return worst(self.findings)

    def to_dict(self) -> dict[str, Any]:
        by_disk: dict[str, list[dict[str, Any]]] = {}
        for finding in self.findings:
            by_disk.setdefault(finding.disk, []).append(finding.to_dict())
        owners = {reading.identity for reading in self.readings} | \
            {array.name for array in self.arrays}
        disks = []
        for reading in self.readings:
            data = reading.to_dict()
            data["findings"] = by_disk.get(reading.identity, [])
            data["status"] = worst([f for f in self.findings if f.disk == reading.identity])
            disks.append(data)
        return {
            "node": self.node,
            "checked_at": self.checked_at,
            "agent": f"smartwatch {__version__}",
            "status": self.status,
            "disks": disks,
            "arrays": [array.to_dict() for array in self.arrays],
            "findings": [finding.to_dict() for finding in self.findings],
            # Findings about the node, not one disk or array ("no SMART-capable disk").
            "node_findings": [finding.to_dict() for finding in self.findings
                              if finding.disk not in owners],
            "notices": [{"kind": n.kind, "title": n.title} for n in self.notices],
            "drain": [{"request_id": event.entry.request_id, "outcome": event.answer.outcome,
                       "http_status": event.answer.http_status, "error": event.answer.error}
                      for event in self.drain_events],
            "selftests": [test.__dict__ for test in self.selftests],
            "drain_pending": [undelivered_dict(entry, self.checked_at)
                              for entry in self.undelivered],
        }


@dataclass
class FlushResult:
    events: list[SpoolEvent]
    undelivered: list[SpoolEntry]


def undelivered_dict(entry: SpoolEntry, now: float) -> dict[str, Any]:
    return {"request_id": entry.request_id, "status": entry.status,
            "attempts": entry.attempts, "created_at": entry.created_at,
            "pending_seconds": round(max(0.0, now - entry.created_at)),
            "last_error": entry.last_error, "reason": entry.payload.get("reason", "")}


def run_check(
    config: Config,
    *,
    notifier: Notifier | None = None,
    client: DrainClient | None = None,
    report_only: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> CheckResult:
    """Given the config, do one full check and return what it found and did.

    With `report_only`, nothing is written, sent or started: for `clonefleet disks`.
    """
    now = clock()
    readings, arrays = collect(config.smartctl, config.mdstat, list(config.devices) or None,
                               list(config.smartctl_options))
    history = History(config.state_db) if not report_only else None
    try:
        findings = _judge(config, readings, arrays, history, now)
        result = CheckResult(config.node, now, readings, arrays, findings)
        if history is None:
            return result
        if any(finding.severity == CRITICAL for finding in findings):
            findings = _confirm(config, readings, arrays, history, findings, sleep, clock)
            result.findings = findings
        stored = history.findings(active_only=True)
        notices = plan(config.node, findings, stored, now, config.alerts.reminder_hours * 3600)
        history.record_findings(findings, now)
        notices += recoveries(config.node, history.inactive_unannounced())
        # Operators hear about the disk first; a drain may wait on a slow control plane.
        if notices:
            # apprise loads its plugins on first use (~30 MiB): only when there is news.
            notifier = _send(config, history, notifier, notices, result, now)
        _spool_drains(config, history, findings, now)
        result.drain_events = _flush(config, history, client, sleep, clock,
                                     include_refused=True)
        drain_notices = _drain_notices(config.node, history, result.drain_events)
        result.undelivered = _undelivered(history, clock())
        drain_notices += _undelivered_notices(config, result.undelivered, clock())
        if drain_notices:
            _send(config, history, notifier, drain_notices, result, clock())
        if config.metrics_file:
            metrics.write(config.metrics_file, metrics.render(config.node, readings, findings,
                                                              clock()))
        result.selftests = selftest.run_due(config.selftest, readings, history,
                                            config.smartctl, now)
        history.set_meta("last_check_at", str(now))
        return result
    finally:
        if history is not None:
            history.close()


def send_test_alert(config: Config, notifier: Notifier | None = None) -> bool:
    """Send one test notice through every configured alert URL; True when delivered."""
    sender = notifier or _default_notifier(config)
    return sender.send(Notice(
        kind="test", key="test", severity="ok",
        title=f"[TEST] {config.node}: smartwatch can reach you",
        body=f"A test notice from smartwatch {__version__} on {config.node}."))


def flush_spool(config: Config, *, notifier: Notifier | None = None,
                client: DrainClient | None = None,
                sleep: Callable[[float], None] = time.sleep,
                clock: Callable[[], float] = time.time) -> FlushResult:
    """Only send spooled drain requests (the frequent timer), no disk reading; return the
    answers and what is still undelivered."""
    history = History(config.state_db)
    try:
        events = _flush(config, history, client, sleep, clock, include_refused=False)
        undelivered = _undelivered(history, clock())
        notices = _drain_notices(config.node, history, events)
        notices += _undelivered_notices(config, undelivered, clock())
        sender = (notifier or _default_notifier(config)) if notices else None
        for notice in notices:
            assert sender is not None
            if sender.send(notice):
                _mark(history, notice, clock())
        return FlushResult(events, _undelivered(history, clock()))
    finally:
        history.close()


def _judge(config: Config, readings: list[DiskReading], arrays: list[MdArray],
           history: History | None, now: float) -> list[Finding]:
    findings: list[Finding] = []
    for reading in readings:
        stored = history.counters(reading.identity) if history else {}
        counters = advance_counters(stored, reading, now)
        if history is not None and not reading.error:
            history.save_counters(reading.identity, counters, now)
        findings += evaluate(reading, counters, config.policy, now)
    findings += evaluate_arrays(arrays, readings, config.policy)
    watching_nothing = nodecheck.no_smart_disk(config.node, readings, config.sys_block)
    if watching_nothing is not None:
        findings.append(watching_nothing)
    return findings


def _confirm(config: Config, readings: list[DiskReading], arrays: list[MdArray],
             history: History, findings: list[Finding], sleep: Callable[[float], None],
             clock: Callable[[], float]) -> list[Finding]:
    """Read disks with a critical finding once more; a critical that does not repeat is kept
    as a warning, so one bad read never drains a node."""
    critical_disks = {finding.disk for finding in findings if finding.severity == CRITICAL}
    suspects = [reading for reading in readings if reading.identity in critical_disks]
    if not suspects:
        return findings
    sleep(config.drain.confirm_delay_seconds)
    now = clock()
    confirmed: set[str] = set()
    for reading in suspects:
        again = reread(config.smartctl, reading, list(config.smartctl_options))
        counters = advance_counters(history.counters(again.identity), again, now)
        for finding in evaluate(again, counters, config.policy, now):
            if finding.severity == CRITICAL:
                confirmed.add(finding.key)
    for finding in evaluate_arrays(arrays, readings, config.policy):
        if finding.severity == CRITICAL:
            confirmed.add(finding.key)
    return [finding if finding.severity != CRITICAL or finding.key in confirmed
            else Finding(finding.key, finding.disk, finding.check, "warning",
                         finding.reason + " (not confirmed by a second reading)",
                         finding.value, finding.realert)
            for finding in findings]


def _spool_drains(config: Config, history: History, findings: list[Finding],
                  now: float) -> None:
    critical = [finding for finding in findings if finding.severity == CRITICAL]
    already = {key for key, finding in history.findings().items() if finding.drain_requested}
    fresh = [finding for finding in critical if finding.key not in already]
    if not fresh:
        return
    if not config.drain.url:
        log.warning("critical finding but no [drain] url configured: not draining")
        return
    # One request carries every new critical finding of this run; the first names the reason.
    request_id = str(uuid.uuid4())
    payload: dict[str, Any] = {
        "node": config.node,
        "request_id": request_id,
        "reason": fresh[0].reason if len(fresh) == 1
        else f"{fresh[0].reason} (and {len(fresh) - 1} more critical findings)",
        "findings": [finding.to_dict() for finding in fresh],
        "agent": f"smartwatch {__version__}",
        "requested_at": now,
    }
    history.spool(request_id, fresh[0].key, payload, now)
    for finding in fresh:
        history.mark_drain_requested(finding.key)


def _flush(config: Config, history: History, client: DrainClient | None,
           sleep: Callable[[float], None], clock: Callable[[], float],
           include_refused: bool) -> list[SpoolEvent]:
    if not history.spooled(("pending", "refused") if include_refused else ("pending",)):
        return []
    if client is None:
        if not config.drain.url:
            return []
        client = DrainClient(config.drain.url, config.drain_token(),
                             ca_file=config.drain.ca_file,
                             timeout=config.drain.timeout_seconds)
    return flush(history, client, attempts=config.drain.attempts,
                 backoff_seconds=config.drain.backoff_seconds,
                 max_backoff_seconds=config.drain.max_backoff_seconds,
                 include_refused=include_refused, sleep=sleep, clock=clock)


def _drain_notices(node: str, history: History, events: list[SpoolEvent]) -> list[Notice]:
    notices = []
    for event in events:
        entry, answer = event.entry, event.answer
        if answer.outcome == ACK:
            log.info("drain request %s acknowledged: %s", entry.request_id, answer.body)
            continue
        if entry.alerted:
            continue
        if answer.outcome == REFUSE:
            notices.append(Notice(
                kind=DRAIN_REFUSED, key=entry.request_id, severity=CRITICAL,
                title=f"[CRITICAL] {node}: DRAIN REFUSED, disk failing and node still serving",
                body=(f"The control plane refused to drain {node}: {answer.error}.\n"
                      f"Reason for the drain: {entry.payload.get('reason')}\n\n"
                      "Act now: add capacity to the region or drain another way; the agent "
                      "retries every check.")))
        else:
            notices.append(Notice(
                kind=DRAIN_REJECTED, key=entry.request_id, severity=CRITICAL,
                title=f"[CRITICAL] {node}: drain request rejected (HTTP {answer.http_status})",
                body=(f"The control plane rejected the drain request of {node}: "
                      f"{answer.error}. Check the node's drain token and name.\n"
                      f"Reason for the drain: {entry.payload.get('reason')}")))
    return notices


def _undelivered(history: History, now: float) -> list[SpoolEntry]:
    """Drain requests not applied yet, each also said on stderr (the journal): a failing disk
    on a node that still serves must never be silent."""
    entries = history.spooled((PENDING, REFUSED))
    for entry in entries:
        minutes = max(0.0, now - entry.created_at) / 60
        log.warning("drain request %s %s for %.0f min after %d attempts (%s): %s",
                    entry.request_id, "refused" if entry.status == REFUSED else "not delivered",
                    minutes, entry.attempts, entry.last_error or "not sent yet",
                    entry.payload.get("reason", ""))
    return entries


def _undelivered_notices(config: Config, entries: list[SpoolEntry],
                         now: float) -> list[Notice]:
    """One page per request still pending after `drain.undelivered_alert_minutes`."""
    limit = config.drain.undelivered_alert_minutes * 60
    notices = []
    for entry in entries:
        if entry.status != PENDING or entry.undelivered_alert_at is not None \
                or now - entry.created_at < limit:
            continue
        minutes = (now - entry.created_at) / 60
        notices.append(Notice(
            kind=DRAIN_UNDELIVERED, key=entry.request_id, severity=CRITICAL,
            title=(f"[CRITICAL] {config.node}: drain request not delivered for "
                   f"{minutes:.0f} min, disk failing and node still serving"),
            body=(f"{config.node} asked the control plane to drain it {minutes:.0f} minutes "
                  f"ago and got no answer after {entry.attempts} attempts "
                  f"(last: {entry.last_error or 'not sent yet'}).\n"
                  f"Reason for the drain: {entry.payload.get('reason')}\n\n"
                  "Check that `clonefleet serve` runs and is reachable from the node, or "
                  "drain the node by hand; the agent keeps retrying every 5 minutes.")))
    return notices


def _after_drain_notice(history: History, notice: Notice) -> None:
    history.update_spool(notice.key, alerted=True)


def _default_notifier(config: Config) -> Notifier:
    if config.alerts.urls:
        from smartwatch.alerts import AppriseNotifier

        return AppriseNotifier(config.alerts.urls, config.alerts.timeout_seconds)
    return LogNotifier()


class _Unreachable:
    """Stands in for a notifier that could not be built: every notice waits for the next run."""

    def send(self, notice: Notice) -> bool:
        return False


def _send(config: Config, history: History, notifier: Notifier | None, notices: list[Notice],
          result: CheckResult, now: float) -> Notifier:
    """Send `notices`, record what went out; return the notifier for later sends."""
    if notifier is None:
        try:
            notifier = _default_notifier(config)
        except Exception as error:  # a bad alert URL must not stop drains and metrics
            log.error("alerts cannot be sent: %s", error)
            notifier = _Unreachable()
    to_send, folded = fold(config.node, notices, config.alerts.max_per_run)
    for notice in to_send:
        sent = notifier.send(notice)
        (result.notices if sent else result.notices_failed).append(notice)
        if not sent:
            continue
        if notice.kind == "summary":
            for inner in folded:
                _mark(history, inner, now)
        else:
            _mark(history, notice, now)
    return notifier


def _mark(history: History, notice: Notice, now: float) -> None:
    if notice.kind in (DRAIN_REFUSED, DRAIN_REJECTED):
        _after_drain_notice(history, notice)
    elif notice.kind == DRAIN_UNDELIVERED:
        history.update_spool(notice.key, undelivered_alert_at=now)
    elif notice.kind == "recovered":
        history.mark_recovery_sent(notice.key)
    else:
        history.mark_alerted(notice.key, now, notice.severity, notice.value)
