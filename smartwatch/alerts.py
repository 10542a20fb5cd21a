"""Decide which notices to send, and send them through apprise.

One notice when a finding first appears, another when it gets worse (warning → critical, or a
counter that re-alerts grew again), a reminder every `reminder_hours` while it persists and one
recovery notice when it clears. More than `max_per_run` notices in one run are folded into a
single summary, so a node that loses a whole controller does not page fifty times.
"""

from __future__ import annotations

import logging

from smartwatch.history import StoredFinding
from smartwatch.notify import AppriseNotifier, LogNotifier, Notice, Notifier
from smartwatch.policy import CRITICAL, Finding

log = logging.getLogger("smartwatch")

NEW = "new"
WORSE = "worse"
REMINDER = "reminder"
RECOVERED = "recovered"
DRAIN_REFUSED = "drain-refused"
DRAIN_REJECTED = "drain-rejected"
DRAIN_UNDELIVERED = "drain-undelivered"
SUMMARY = "summary"


def plan(node: str, current: list[Finding], stored: dict[str, StoredFinding], now: float,
         reminder_seconds: float) -> list[Notice]:
    """Given this run's findings and the active ones stored before it, return alert notices."""
    notices = []
    for finding in current:
        before = stored.get(finding.key)
        kind = None
        if before is None or before.last_alert_at is None:
            kind = NEW
        elif _worse(finding, before):
            kind = WORSE
        elif now - before.last_alert_at >= reminder_seconds:
            kind = REMINDER
        if kind is None:
            continue
        label = {NEW: "", WORSE: "worse: ", REMINDER: "still: "}[kind]
        notices.append(Notice(
            kind=kind, key=finding.key, severity=finding.severity,
            title=f"[{finding.severity.upper()}] {node}: {label}{_short(finding.reason)}",
            body=finding.reason + _advice(finding), value=finding.value,
        ))
    return notices


def _worse(finding: Finding, before: StoredFinding) -> bool:
    if finding.severity == CRITICAL and before.alerted_severity != CRITICAL:
        return True
    return (finding.realert and finding.value is not None
            and before.alerted_value is not None and finding.value > before.alerted_value)


def recoveries(node: str, cleared: dict[str, StoredFinding]) -> list[Notice]:
    return [Notice(kind=RECOVERED, key=key, severity="ok",
                   title=f"[RECOVERED] {node}: {_short(finding.reason)}",
                   body=f"No longer seen on {node}: {finding.reason}")
            for key, finding in sorted(cleared.items())]


def fold(node: str, notices: list[Notice], limit: int) -> tuple[list[Notice], list[Notice]]:
    """Split notices into those to send one by one and the rest, summarised in one notice."""
    if len(notices) <= limit:
        return notices, []
    # Critical first, so the summary never hides the page that matters.
    ordered = sorted(notices, key=lambda notice: notice.severity != CRITICAL)
    keep, rest = ordered[:limit - 1], ordered[limit - 1:]
    summary = Notice(
        kind=SUMMARY, key="summary", severity=CRITICAL if any(
            notice.severity == CRITICAL for notice in rest) else "warning",
        title=f"[SUMMARY] {node}: {len(rest)} more disk notices",
        body="\n".join(f"- {notice.title}" for notice in rest),
    )
    return [*keep, summary], rest


def _short(reason: str) -> str:
    return reason if len(reason) <= 120 else reason[:117] + "..."


def _advice(finding: Finding) -> str:
    if finding.severity == CRITICAL:
        return ("\n\nsmartwatch asks the control plane to drain this node (when a drain URL "
                "is configured). Replace the disk, then undrain the node.")
    return "\n\nNo action is taken automatically; watch the disk and plan a replacement."


__all__ = ["AppriseNotifier", "LogNotifier", "Notice", "Notifier"]
