"""SQLite (WAL) state store. Safe across processes: writes take an IMMEDIATE lock."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clonefleet.errors import LeaseHeld, LeaseLost, StateError
from clonefleet.retry import RetryPolicy, TimedOut, wait_until
from clonefleet.state.model import (
    DnsServerRecord,
    HealthCheck,
    Lease,
    LifecycleWrites,
    NodeRecord,
    StateCheck,
    StepRecord,
    Transition,
    check_name,
)

# Locks are held for seconds at most; a waiter takes over soon after the holder lets go.
LOCK_POLL = RetryPolicy(first=0.02, cap=0.02, factor=1.0, jitter=0.0)

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    since REAL NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS history_node ON history (node, id);
CREATE TABLE IF NOT EXISTS facts (
    node TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (node, key)
);
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    step TEXT NOT NULL,
    status TEXT NOT NULL,
    seconds REAL NOT NULL,
    at REAL NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS health_checks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    ok INTEGER NOT NULL,
    source TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS health_checks_node ON health_checks (node, id);
CREATE TABLE IF NOT EXISTS dns_publishes (
    serial INTEGER PRIMARY KEY,
    actor TEXT NOT NULL,
    at REAL NOT NULL,
    summary TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    ttl REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dns_servers (
    node TEXT PRIMARY KEY,
    serial INTEGER,
    ok INTEGER NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    at REAL NOT NULL
);
"""


class SqliteStateStore(LifecycleWrites):
    """Given a database path, keep node states, history, facts and step timings there."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connection() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
            self._local.depth = 0
        return db

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic read-check-write across processes; nests by joining the outer one."""
        db = self._connection()
        if self._local.depth:
            self._local.depth += 1
            try:
                yield
            finally:
                self._local.depth -= 1
            return
        db.execute("BEGIN IMMEDIATE")
        self._local.depth = 1
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")
        finally:
            self._local.depth = 0

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def get(self, node: str) -> NodeRecord | None:
        row = self._connection().execute(
            "SELECT name, state, since, actor, reason FROM nodes WHERE name = ?", (node,)
        ).fetchone()
        return NodeRecord(*row) if row else None

    def all(self) -> list[NodeRecord]:
        rows = self._connection().execute(
            "SELECT name, state, since, actor, reason FROM nodes ORDER BY name"
        ).fetchall()
        return [NodeRecord(*row) for row in rows]

    def _write_state(self, node: str, to_state: str, *, actor: str, reason: str,
                     check: StateCheck | None) -> NodeRecord:
        """Read, check and write in one IMMEDIATE transaction: writers wait for each other."""
        with self.transaction():
            current = self.get(node)
            from_state = current.state if current else None
            if check is not None:
                check(from_state)
            now = time.time()
            db = self._connection()
            db.execute(
                "INSERT INTO nodes (name, state, since, actor, reason) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET state = excluded.state, since = excluded.since, "
                "actor = excluded.actor, reason = excluded.reason",
                (node, to_state, now, actor, reason),
            )
            db.execute(
                "INSERT INTO history (node, from_state, to_state, actor, reason, at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (node, from_state, to_state, actor, reason, now),
            )
            return NodeRecord(node, to_state, now, actor, reason)

    def history(self, node: str | None = None) -> list[Transition]:
        query = "SELECT id, node, from_state, to_state, actor, reason, at FROM history"
        params: tuple[str, ...] = ()
        if node is not None:
            query += " WHERE node = ?"
            params = (node,)
        rows = self._connection().execute(query + " ORDER BY id", params).fetchall()
        return [Transition(*row) for row in rows]

    def set_fact(self, node: str, key: str, value: Any) -> None:
        with self.transaction():
            self._connection().execute(
                "INSERT INTO facts (node, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT(node, key) DO UPDATE SET value = excluded.value",
                (node, key, json.dumps(value)),
            )

    def get_fact(self, node: str, key: str, default: Any = None) -> Any:
        row = self._connection().execute(
            "SELECT value FROM facts WHERE node = ? AND key = ?", (node, key)
        ).fetchone()
        return json.loads(row[0]) if row else default

    def facts(self, node: str) -> dict[str, Any]:
        rows = self._connection().execute(
            "SELECT key, value FROM facts WHERE node = ? ORDER BY key", (node,)
        ).fetchall()
        return {key: json.loads(value) for key, value in rows}

    def fact_values(self, key: str) -> dict[str, Any]:
        """Every node's value of fact `key` (nodes without it are left out)."""
        rows = self._connection().execute(
            "SELECT node, value FROM facts WHERE key = ? ORDER BY node", (key,)
        ).fetchall()
        return {node: json.loads(value) for node, value in rows}

    def delete_fact(self, node: str, key: str) -> None:
        with self.transaction():
            self._connection().execute(
                "DELETE FROM facts WHERE node = ? AND key = ?", (node, key)
            )

    def delete_facts(self, node: str) -> None:
        """Forget everything known about a node's machine (it was destroyed)."""
        with self.transaction():
            self._connection().execute("DELETE FROM facts WHERE node = ?", (node,))

    def record_step(
        self, node: str, step: str, status: str, seconds: float, detail: str = ""
    ) -> None:
        with self.transaction():
            self._connection().execute(
                "INSERT INTO steps (node, step, status, seconds, at, detail) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (node, step, status, seconds, time.time(), detail),
            )

    def steps(self, node: str) -> list[StepRecord]:
        rows = self._connection().execute(
            "SELECT node, step, status, seconds, at, detail FROM steps WHERE node = ? ORDER BY id",
            (node,),
        ).fetchall()
        return [StepRecord(*row) for row in rows]

    def record_health(self, node: str, ok: bool, *, source: str, detail: str = "") -> HealthCheck:
        now = time.time()
        with self.transaction():
            self._connection().execute(
                "INSERT INTO health_checks (node, ok, source, detail, at) VALUES (?, ?, ?, ?, ?)",
                (node, int(ok), source, detail, now),
            )
        return HealthCheck(node, ok, source, detail, now)

    def health(self, node: str, limit: int = 1) -> list[HealthCheck]:
        """The node's latest health checks, newest first."""
        rows = self._connection().execute(
            "SELECT node, ok, source, detail, at FROM health_checks WHERE node = ? "
            "ORDER BY id DESC LIMIT ?",
            (node, limit),
        ).fetchall()
        return [HealthCheck(row[0], bool(row[1]), row[2], row[3], row[4]) for row in rows]

    def next_dns_serial(self, actor: str, summary: str = "") -> int:
        """Allocate a zone serial above every earlier one (seconds since 1970 when possible)."""
        with self.transaction():
            db = self._connection()
            (last,) = db.execute("SELECT COALESCE(MAX(serial), 0) FROM dns_publishes").fetchone()
            # Time-based serials stay above what a server was given before the database was
            # recreated; the +1 keeps them strictly increasing within one second.
            serial = max(int(last) + 1, int(time.time()))
            db.execute(
                "INSERT INTO dns_publishes (serial, actor, at, summary) VALUES (?, ?, ?, ?)",
                (serial, actor, time.time(), summary),
            )
            return serial

    def last_dns_serial(self) -> int | None:
        (last,) = self._connection().execute("SELECT MAX(serial) FROM dns_publishes").fetchone()
        return int(last) if last is not None else None

    def record_dns_server(self, node: str, serial: int | None, ok: bool, error: str = "") -> None:
        """Remember the outcome of the latest push to a node's DNS server."""
        with self.transaction():
            self._connection().execute(
                "INSERT INTO dns_servers (node, serial, ok, error, at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(node) DO UPDATE SET serial = CASE WHEN excluded.ok "
                "THEN excluded.serial ELSE dns_servers.serial END, ok = excluded.ok, "
                "error = excluded.error, at = excluded.at",
                (node, serial, int(ok), error, time.time()),
            )

    def dns_servers(self) -> list[DnsServerRecord]:
        rows = self._connection().execute(
            "SELECT node, serial, ok, error, at FROM dns_servers ORDER BY node"
        ).fetchall()
        return [DnsServerRecord(row[0], row[1], bool(row[2]), row[3], row[4]) for row in rows]

    @contextmanager
    def lock(self, name: str, timeout: float = 60.0) -> Iterator[None]:
        """A named lock across processes, held over slow work outside a transaction.

        A file lock next to the database: the kernel releases it when a holder dies, so a crash
        never leaves it stuck. Raises `StateError` after `timeout` seconds.
        """
        if not name.replace("-", "").isalnum():
            raise StateError(f"invalid lock name {name!r}; use letters, digits and '-'")
        path = self.path.with_name(f"{self.path.name}.{name}.lock")
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        def acquired() -> bool | None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            return True

        try:
            try:
                wait_until(acquired, what=f"lock {name}", timeout=timeout, policy=LOCK_POLL,
                           transient=lambda error: False)
            except TimedOut:
                raise StateError(
                    f"lock {name!r} ({path}) still held after {timeout:.0f} s; "
                    "another clonefleet process is working, retry later"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            os.close(handle)


    def take_lease(self, name: str, holder: str, ttl: float) -> Lease:
        """Take the lease `name` for `ttl` seconds; `LeaseHeld` while another holder's lease
        has not expired. Taking one's own lease again renews it."""
        check_name(name, "lease")
        if not ttl > 0:
            raise StateError(f"lease {name!r}: ttl must be more than 0 seconds, got {ttl:g}")
        with self.transaction():
            current = self.lease(name)
            if current is not None and current.holder != holder:
                raise LeaseHeld(f"lease {name!r} is held by {current.holder!r} for another "
                                f"{max(0.0, current.expires_at - time.time()):.0f} s")
            lease = Lease(name, holder, ttl, time.time() + ttl)
            self._connection().execute(
                "INSERT INTO leases (name, holder, ttl, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, ttl = excluded.ttl, "
                "expires_at = excluded.expires_at",
                (name, holder, ttl, lease.expires_at),
            )
            return lease

    def renew_lease(self, name: str, holder: str) -> Lease:
        """Extend `holder`'s lease by its TTL; `LeaseLost` if it expired or is not theirs."""
        check_name(name, "lease")
        with self.transaction():
            current = self.lease(name)
            if current is None or current.holder != holder:
                raise LeaseLost(f"lease {name!r} is no longer held by {holder!r} (expired or "
                                "taken over); stop acting on it and take it again")
            lease = Lease(name, holder, current.ttl, time.time() + current.ttl)
            self._connection().execute("UPDATE leases SET expires_at = ? WHERE name = ?",
                                       (lease.expires_at, name))
            return lease

    def release_lease(self, name: str, holder: str) -> bool:
        """Give up `holder`'s lease; False when it was not theirs (expired, or never taken)."""
        check_name(name, "lease")
        with self.transaction():
            deleted = self._connection().execute(
                "DELETE FROM leases WHERE name = ? AND holder = ? AND expires_at > ?",
                (name, holder, time.time()),
            ).rowcount
            return bool(deleted)

    def lease(self, name: str) -> Lease | None:
        """The unexpired lease `name`, or None."""
        row = self._connection().execute(
            "SELECT name, holder, ttl, expires_at FROM leases WHERE name = ? AND expires_at > ?",
            (name, time.time()),
        ).fetchone()
        return Lease(*row) if row else None
