"""The node's own memory: counters per disk, findings and their alerts, the drain spool.

One small SQLite file (WAL) so a crash between two checks loses nothing and the history that
judges "is this count new?" survives reboots.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smartwatch.policy import CounterState, Finding

SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    disk TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    last_increase_at REAL,
    last_increase_from INTEGER,
    updated_at REAL NOT NULL,
    PRIMARY KEY (disk, name)
);
CREATE TABLE IF NOT EXISTS findings (
    key TEXT PRIMARY KEY,
    disk TEXT NOT NULL,
    check_name TEXT NOT NULL,
    severity TEXT NOT NULL,
    reason TEXT NOT NULL,
    value INTEGER,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    active INTEGER NOT NULL,
    last_alert_at REAL,
    alerted_severity TEXT,
    alerted_value INTEGER,
    drain_requested INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS drain_spool (
    request_id TEXT PRIMARY KEY,
    finding_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    answered_at REAL,
    last_error TEXT NOT NULL DEFAULT '',
    alerted INTEGER NOT NULL DEFAULT 0,
    undelivered_alert_at REAL
);
CREATE TABLE IF NOT EXISTS selftests (
    disk TEXT NOT NULL,
    kind TEXT NOT NULL,
    started_at REAL NOT NULL,
    PRIMARY KEY (disk, kind)
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

PENDING = "pending"
ACKNOWLEDGED = "acknowledged"
REFUSED = "refused"


@dataclass(frozen=True)
class StoredFinding:
    key: str
    disk: str
    check: str
    severity: str
    reason: str
    value: int | None
    first_seen: float
    last_seen: float
    active: bool
    last_alert_at: float | None
    alerted_severity: str | None
    alerted_value: int | None
    drain_requested: bool


@dataclass(frozen=True)
class SpoolEntry:
    request_id: str
    finding_key: str
    payload: dict[str, Any]
    status: str
    attempts: int
    created_at: float
    answered_at: float | None
    last_error: str
    alerted: bool
    # When the "still not delivered" page went out (None: not yet).
    undelivered_alert_at: float | None = None


class History:
    """Given the path of the SQLite file, keep the agent's state there."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA busy_timeout=30000")
        self.db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        # State files written before a column existed get it added; nothing is rewritten.
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(drain_spool)")}
        if "undelivered_alert_at" not in columns:
            self.db.execute("ALTER TABLE drain_spool ADD COLUMN undelivered_alert_at REAL")

    def close(self) -> None:
        self.db.close()

    # Counters

    def counters(self, disk: str) -> dict[str, CounterState]:
        rows = self.db.execute(
            "SELECT name, value, last_increase_at, last_increase_from FROM counters "
            "WHERE disk = ?", (disk,)).fetchall()
        # `previous` of a stored counter is its own value: the next reading compares with it.
        return {name: CounterState(value, value, increase_at, increase_from)
                for name, value, increase_at, increase_from in rows}

    def save_counters(self, disk: str, states: dict[str, CounterState], now: float) -> None:
        with self.db:
            for name, state in states.items():
                self.db.execute(
                    "INSERT INTO counters (disk, name, value, last_increase_at, "
                    "last_increase_from, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(disk, name) DO UPDATE SET value = excluded.value, "
                    "last_increase_at = excluded.last_increase_at, "
                    "last_increase_from = excluded.last_increase_from, "
                    "updated_at = excluded.updated_at",
                    (disk, name, state.value, state.last_increase_at, state.last_increase_from,
                     now))

    # Findings

    def findings(self, active_only: bool = True) -> dict[str, StoredFinding]:
        query = ("SELECT key, disk, check_name, severity, reason, value, first_seen, last_seen, "
                 "active, last_alert_at, alerted_severity, alerted_value, drain_requested "
                 "FROM findings")
        if active_only:
            query += " WHERE active = 1"
        rows = self.db.execute(query + " ORDER BY key").fetchall()
        return {row[0]: StoredFinding(
            key=row[0], disk=row[1], check=row[2], severity=row[3], reason=row[4], value=row[5],
            first_seen=row[6], last_seen=row[7], active=bool(row[8]), last_alert_at=row[9],
            alerted_severity=row[10], alerted_value=row[11], drain_requested=bool(row[12]),
        ) for row in rows}

    def record_findings(self, current: list[Finding], now: float) -> None:
        """Mark `current` active (keeping alert bookkeeping) and every other finding inactive."""
        with self.db:
            keys = [finding.key for finding in current]
            for finding in current:
                self.db.execute(
                    "INSERT INTO findings (key, disk, check_name, severity, reason, value, "
                    "first_seen, last_seen, active) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1) "
                    "ON CONFLICT(key) DO UPDATE SET severity = excluded.severity, "
                    "reason = excluded.reason, value = excluded.value, "
                    "last_seen = excluded.last_seen, "
                    "first_seen = CASE WHEN findings.active = 1 THEN findings.first_seen "
                    "ELSE excluded.first_seen END, "
                    "last_alert_at = CASE WHEN findings.active = 1 THEN findings.last_alert_at "
                    "ELSE NULL END, "
                    "drain_requested = CASE WHEN findings.active = 1 "
                    "THEN findings.drain_requested ELSE 0 END, "
                    "active = 1",
                    (finding.key, finding.disk, finding.check, finding.severity, finding.reason,
                     finding.value, now, now))
            placeholders = ",".join("?" for _ in keys)
            self.db.execute(
                f"UPDATE findings SET active = 0 WHERE active = 1 AND key NOT IN ({placeholders})",
                keys)

    def mark_alerted(self, key: str, now: float, severity: str | None,
                     value: int | None) -> None:
        self.db.execute(
            "UPDATE findings SET last_alert_at = ?, alerted_severity = ?, alerted_value = ? "
            "WHERE key = ?", (now, severity, value, key))

    def mark_recovery_sent(self, key: str) -> None:
        # A cleared finding keeps its row (for `status`), without pending alert bookkeeping.
        self.db.execute("UPDATE findings SET last_alert_at = NULL WHERE key = ?", (key,))

    def inactive_unannounced(self) -> dict[str, StoredFinding]:
        """Cleared findings whose alert went out but whose recovery notice did not yet."""
        return {key: finding for key, finding in self.findings(active_only=False).items()
                if not finding.active and finding.last_alert_at is not None}

    def mark_drain_requested(self, key: str) -> None:
        self.db.execute("UPDATE findings SET drain_requested = 1 WHERE key = ?", (key,))

    # Drain spool

    def spool(self, request_id: str, finding_key: str, payload: dict[str, Any],
              now: float) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO drain_spool (request_id, finding_key, payload, status, "
            "created_at) VALUES (?, ?, ?, ?, ?)",
            (request_id, finding_key, json.dumps(payload, sort_keys=True), PENDING, now))

    def spooled(self, statuses: tuple[str, ...] = (PENDING,)) -> list[SpoolEntry]:
        placeholders = ",".join("?" for _ in statuses)
        rows = self.db.execute(
            "SELECT request_id, finding_key, payload, status, attempts, created_at, "
            "answered_at, last_error, alerted, undelivered_alert_at FROM drain_spool "
            f"WHERE status IN ({placeholders}) ORDER BY created_at, request_id",
            statuses).fetchall()
        return [SpoolEntry(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5], row[6],
                           row[7], bool(row[8]), row[9]) for row in rows]

    def all_spooled(self) -> list[SpoolEntry]:
        return self.spooled((PENDING, ACKNOWLEDGED, REFUSED))

    def update_spool(self, request_id: str, *, status: str | None = None,
                     attempts: int | None = None, answered_at: float | None = None,
                     last_error: str | None = None, alerted: bool | None = None,
                     undelivered_alert_at: float | None = None) -> None:
        fields: list[str] = []
        values: list[Any] = []
        for name, value in (("status", status), ("attempts", attempts),
                            ("answered_at", answered_at), ("last_error", last_error),
                            ("alerted", None if alerted is None else int(alerted)),
                            ("undelivered_alert_at", undelivered_alert_at)):
            if value is not None:
                fields.append(f"{name} = ?")
                values.append(value)
        if fields:
            self.db.execute(f"UPDATE drain_spool SET {', '.join(fields)} WHERE request_id = ?",
                            [*values, request_id])

    # Self-tests and metadata

    def selftest_started(self, disk: str, kind: str) -> float | None:
        row = self.db.execute("SELECT started_at FROM selftests WHERE disk = ? AND kind = ?",
                              (disk, kind)).fetchone()
        return float(row[0]) if row else None

    def record_selftest(self, disk: str, kind: str, now: float) -> None:
        self.db.execute(
            "INSERT INTO selftests (disk, kind, started_at) VALUES (?, ?, ?) "
            "ON CONFLICT(disk, kind) DO UPDATE SET started_at = excluded.started_at",
            (disk, kind, now))

    def get_meta(self, key: str, default: str = "") -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))
