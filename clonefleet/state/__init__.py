"""Node lifecycle state and its history, behind a small interface.

SQLite (WAL) is the default backend, a file in the fleet's state folder; an etcd cluster
(`clonefleet.state.etcd`) holds the same state for fleets whose controllers and unlockers run
in more than one place. The fleet file chooses (`clonefleet.state.config`, docs/state.md).
"""

from __future__ import annotations

from pathlib import Path

from clonefleet.state.config import SQLITE, StateConfig
from clonefleet.state.model import (
    FLEET_FACTS,
    LIFECYCLE,
    DnsServerRecord,
    HealthCheck,
    Lease,
    NodeRecord,
    StateStore,
    StepRecord,
    Transition,
)
from clonefleet.state.sqlite import SqliteStateStore


def open_store(state_dir: str | Path, config: StateConfig | None = None) -> StateStore:
    """The fleet's store: `<state_dir>/state.sqlite` unless `config` names an etcd cluster,
    whose keys for this fleet start with its prefix (default `/clonefleet/<fleet>/`, the
    fleet being the state folder's name)."""
    config = config or SQLITE
    if config.backend == "etcd":
        from clonefleet.state.etcd import EtcdStateStore  # only fleets on etcd import it

        return EtcdStateStore(config, Path(state_dir).name)
    return SqliteStateStore(Path(state_dir) / "state.sqlite")


__all__ = [
    "FLEET_FACTS",
    "LIFECYCLE",
    "SQLITE",
    "DnsServerRecord",
    "HealthCheck",
    "Lease",
    "NodeRecord",
    "SqliteStateStore",
    "StateConfig",
    "StateStore",
    "StepRecord",
    "Transition",
    "open_store",
]
