"""Node lifecycle state and its history, behind a small interface.

SQLite (WAL) is the default backend; a distributed backend (etcd) can implement the same
`StateStore` protocol later.
"""

from __future__ import annotations

from clonefleet.state.model import (
    FLEET_FACTS,
    LIFECYCLE,
    DnsServerRecord,
    HealthCheck,
    NodeRecord,
    StateStore,
    StepRecord,
    Transition,
)
from clonefleet.state.sqlite import SqliteStateStore, open_store

__all__ = [
    "FLEET_FACTS",
    "LIFECYCLE",
    "DnsServerRecord",
    "HealthCheck",
    "NodeRecord",
    "SqliteStateStore",
    "StateStore",
    "StepRecord",
    "Transition",
    "open_store",
]
