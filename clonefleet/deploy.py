"""Run deploys on nodes (through `clonefleet.deploy_runner` in a child process), or find what
a deploy would change on them without changing anything (`dry_run_deploy`, `--diff`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clonefleet import nodefacts
from clonefleet.child_run import run_child
from clonefleet.errors import DeployError, NotProvisionedError
from clonefleet.inventory import Fleet
from clonefleet.state import StateStore

# `clonefleet deploy --diff`: something would change (like diff(1)'s 1, but distinct from any
# error's code, so a script can tell "changes pending" from "could not tell").
CHANGES_PENDING = 40


@dataclass(frozen=True)
class DeployResult:
    node: str
    connected: bool
    failed: bool
    changed: tuple[str, ...]
    unchanged: int
    errors: tuple[str, ...]  # "operation: its own error", in order
    not_run: tuple[str, ...] = ()  # operations skipped after the first failure
    # The node's host key was not the one pinned in the fleet's known_hosts (or none was).
    host_key_refused: bool = False
    # Seconds: connect, prepare (facts), execute, and the slowest operations' names and times.
    timings: Mapping[str, Any] = field(default_factory=dict)


# What makes a node of the fleet: the full clone (deploys/full.py).
DEFAULT_DEPLOY = "deploys.full:node"


def describe_failure(result: DeployResult) -> str:
    """One line: each failed operation with its own error, then how many never ran."""
    text = "; ".join(result.errors) or "could not connect"
    if result.not_run:
        count = len(result.not_run)
        text += f" ({count} later operation{'s' if count > 1 else ''} not run)"
    return text


@dataclass(frozen=True)
class FileDiff:
    path: str | None
    created: bool
    diff: str | None  # unified diff; None when hidden
    hidden: str | None = None  # why the content is not shown ("mode 600", "holds a secret")


@dataclass(frozen=True)
class PlannedChange:
    operation: str
    files: tuple[FileDiff, ...] = ()
    # Runs only when its condition holds at run time (e.g. a reload after a config change).
    conditional: bool = False


@dataclass(frozen=True)
class DiffResult:
    """What a deploy would change on one node, from its facts; nothing was changed."""

    node: str
    connected: bool
    failed: bool  # could not be compared (connection, or a fact that failed)
    changes: tuple[PlannedChange, ...]
    unchanged: int
    errors: tuple[str, ...]
    host_key_refused: bool = False


def require_addresses(fleet: Fleet, store: StateStore, nodes: Sequence[str]) -> None:
    """Raise NotProvisionedError when none of `nodes` has a recorded SSH address (a deploy
    would have nowhere to go); some missing is each one's own failure in the results."""
    without = [name for name in nodes if nodefacts.load(store, name).ssh is None]
    if not nodes or len(without) < len(nodes):
        return
    described = ", ".join(f"{name} ({_state(store, name)})" for name in without)
    raise NotProvisionedError(
        f"cannot deploy: no SSH address is recorded for {described}; provision them first "
        f"(clonefleet provision {' '.join(without)}), which records each node's address "
        "when its server is created (a node provisioned from another state folder needs "
        "that CLONEFLEET_STATE_DIR)")


def _state(store: StateStore, node: str) -> str:
    record = store.get(node)
    return f"state {record.state}" if record else "never provisioned"


def _run_runner(fleet_path: Path, nodes: list[str], deploy: str, timeout: float,
                *options: str) -> dict[str, Any]:
    run = run_child("clonefleet.deploy_runner", fleet_path,
                    ["--deploy", deploy, *options, *nodes], timeout)
    if run.data is None:
        tail = "\n".join(run.tail(20))
        raise DeployError(f"pyinfra could not run {deploy}: {tail}")
    data: dict[str, Any] = run.data
    return data


def dry_run_deploy(fleet_path: Path, nodes: list[str], deploy: str = DEFAULT_DEPLOY,
                   timeout: float = 900) -> dict[str, DiffResult]:
    """Given nodes, find what `deploy` would change on each, from pyinfra's facts, without
    changing anything (no operation runs, no token is issued, no hook records anything)."""
    data = _run_runner(fleet_path, nodes, deploy, timeout, "--dry-run")
    return {name: DiffResult(
        node=name, connected=value["connected"], failed=value["failed"],
        changes=tuple(PlannedChange(
            operation=change["operation"], conditional=change["conditional"],
            files=tuple(FileDiff(path=item["path"], created=item["created"],
                                 diff=item["diff"], hidden=item["hidden"])
                        for item in change["files"]))
            for change in value.get("changes", ())),
        unchanged=value["unchanged"], errors=tuple(value["errors"]),
        host_key_refused=bool(value.get("host_key_refused")))
        for name, value in data.items()}


def run_deploy(fleet_path: Path, nodes: list[str], deploy: str = DEFAULT_DEPLOY,
               timeout: float = 1800) -> dict[str, DeployResult]:
    """Given nodes, apply `deploy` to them; return per-node results (never raises for a
    failed host: callers decide; raises DeployError when pyinfra itself could not run)."""
    data = _run_runner(fleet_path, nodes, deploy, timeout)
    return {name: DeployResult(node=name, connected=value["connected"], failed=value["failed"],
                               changed=tuple(value["changed"]), unchanged=value["unchanged"],
                               errors=tuple(value["errors"]),
                               not_run=tuple(value.get("not_run", ())),
                               host_key_refused=bool(value.get("host_key_refused")),
                               timings=value.get("timings", {}))
            for name, value in data.items()}


def describe_timings(timings: Mapping[str, Any]) -> str:
    """One line: where a deploy's time went."""
    if not timings:
        return ""
    slowest = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings["slowest"][:4])
    counts = timings.get("facts") or {}
    read = (f" ({counts.get('in one go', 0)} in one go, {counts.get('alone', 0)} alone)"
            if counts else "")
    return (f"connect {timings['connect']:.0f} s, facts {timings['prepare']:.0f} s{read}, "
            f"{timings['operations']} operations {timings['execute']:.0f} s"
            + (f" (slowest: {slowest})" if slowest else ""))
