"""Provision (or deploy) several nodes at once, each exactly as it would be alone.

Invariants: every node runs through its own `Provisioner`, so it stays resumable from its own
recorded state; a node's failure ends up in its `NodeOutcome` and never stops, fails or
delays another node; at most `parallel` nodes run at once, and at most `max_parallel` nodes
of a provider that declares one (`[providers.NAME] max_parallel`, else its driver's). What
happens reaches the caller as `Event`s, delivered one at a time, so a display needs no lock
of its own for them.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from clonefleet.deploy import (
    DEFAULT_DEPLOY,
    DeployResult,
    DiffResult,
    describe_failure,
    dry_run_deploy,
    require_addresses,
    run_deploy,
)
from clonefleet.errors import ClonefleetError, ConfigError, DeployError, one_line
from clonefleet.inventory import Fleet
from clonefleet.keystore import Keystore
from clonefleet.providers import provider_for
from clonefleet.providers.registry import DRIVERS
from clonefleet.provision import Provisioner, ProvisionReport, recovery_key_of, remaining_steps
from clonefleet.ssh import ensure_operator_key
from clonefleet.state import StateStore
from clonefleet.unlockers import fleet_keystore

# Most of a node's time is spent waiting on its provider, its boot and the network; the
# controller's own share (node layer build, image copy, the deploy's child process) is a few
# CPU-minutes per node, so a small controller keeps up with 4 at once. Raise it with
# --parallel where the controller has cores to spare.
DEFAULT_PARALLEL = 4

EventKind = Literal["start", "step", "progress", "log", "result"]


class SomeNodesFailed(ClonefleetError):
    """Several nodes were run: some succeeded, some failed (each failure is in the result)."""

    exit_code = 30


class NoNodeSucceeded(ClonefleetError):
    """Several nodes were run and every one of them failed."""

    exit_code = 31


@dataclass(frozen=True)
class Event:
    """Something that happened to one node. `fields` by kind:

    - start: `from_state` (recorded state, None if never recorded), `steps` (planned)
    - step: `step` (a step begins)
    - progress: `what`, `done`, `total` (bytes), `percent`
    - log: `message`, as the provisioner, installer or provider said it
    - result: the node's outcome (`ok`, `state`, `seconds`, `failed_step`, `error`, ...)
    """

    node: str
    kind: EventKind
    at: float  # wall clock (time.time())
    fields: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"time": round(self.at, 3), "node": self.node, "kind": self.kind,
                **self.fields}


EventSink = Callable[[Event], None]


def report_as_dict(report: ProvisionReport) -> dict[str, Any]:
    """A provision report as `--json` has always printed it for one node."""
    return {"node": report.node, "state": report.final_state,
            "steps": [{"step": step.strip(), "seconds": round(seconds, 1),
                       "substep": step.startswith("  ")} for step, seconds in report.steps],
            "skipped": report.skipped, "deploy_changes": report.deploy_changes,
            # Where the deploy's time went (connect, facts, operations, the slowest ones).
            "deploy_timings": report.deploy_timings,
            "total_seconds": round(report.total_seconds, 1),
            # Present only when this run installed the node: the one time it is shown.
            **({"recovery_key": report.recovery_key} if report.recovery_key else {})}


@dataclass
class NodeOutcome:
    """How one node ended: its report, or the error that stopped it and at which step."""

    node: str
    state: str | None  # the recorded lifecycle state afterwards (None: nothing recorded)
    seconds: float  # this node's own wall time
    report: ProvisionReport | None = None
    error: BaseException | None = None
    failed_step: str | None = None  # as the state store recorded it; None outside any step
    done_steps: list[tuple[str, float]] = field(default_factory=list)  # this run, if failed

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def exit_code(self) -> int:
        if self.error is None:
            return 0
        return int(getattr(self.error, "exit_code", 1))

    @property
    def message(self) -> str:
        """The error in one line ('' when the node succeeded)."""
        if self.error is None:
            return ""
        text = str(self.error) if isinstance(self.error, ClonefleetError) \
            else f"{type(self.error).__name__}: {self.error}"
        return one_line(text)

    @property
    def recovery_key(self) -> str:
        """The LUKS recovery key this run installed, even when a later step failed."""
        if self.report is not None and self.report.recovery_key:
            return self.report.recovery_key
        return recovery_key_of(self.error)

    def summary(self) -> dict[str, Any]:
        """What a result event and a result row carry."""
        return {"ok": self.ok, "state": self.state, "seconds": round(self.seconds, 1),
                "skipped": list(self.report.skipped) if self.report else [],
                "failed_step": self.failed_step, "error": self.message or None,
                "error_kind": type(self.error).__name__ if self.error else None,
                "exit_code": self.exit_code}

    def as_dict(self) -> dict[str, Any]:
        if self.report is not None:
            data = report_as_dict(self.report)
        else:
            data = {"node": self.node,
                    "steps": [{"step": step, "seconds": round(seconds, 1), "substep": False}
                              for step, seconds in self.done_steps],
                    "deploy_changes": [], "deploy_timings": {},
                    "total_seconds": round(sum(seconds for _, seconds in self.done_steps), 1)}
            if self.recovery_key:
                data["recovery_key"] = self.recovery_key
        return {**data, **self.summary()}


@dataclass
class FleetResult:
    """Every node's outcome, in the order the nodes were named."""

    outcomes: list[NodeOutcome]
    parallel: int
    seconds: float
    action: str = "provision"

    @property
    def succeeded(self) -> list[str]:
        return [outcome.node for outcome in self.outcomes if outcome.ok]

    @property
    def failed(self) -> list[str]:
        return [outcome.node for outcome in self.outcomes if not outcome.ok]

    def error(self) -> ClonefleetError | None:
        """None when every node succeeded; else the error whose exit code says whether some
        or none did."""
        return failure_error(self.action, len(self.outcomes),
                             [(outcome.node, outcome.failed_step) for outcome in self.outcomes
                              if not outcome.ok])

    def as_dict(self) -> dict[str, Any]:
        return {"nodes": [outcome.as_dict() for outcome in self.outcomes],
                "succeeded": self.succeeded, "failed": self.failed,
                "parallel": self.parallel, "seconds": round(self.seconds, 1)}


def failure_error(action: str, total: int,
                  failed: Sequence[tuple[str, str | None]]) -> ClonefleetError | None:
    """For a run over `total` nodes of which `failed` (node, failing step) failed: None, or
    the error naming each failed node (and its step) in one line, `NoNodeSucceeded` when
    all failed, else `SomeNodesFailed`."""
    if not failed:
        return None
    names = ", ".join(f"{node} ({step})" if step else node for node, step in failed)
    text = f"{action} failed on {len(failed)} of {total} nodes: {names}"
    return NoNodeSucceeded(text) if len(failed) == total else SomeNodesFailed(text)


@dataclass
class PlanOutcome:
    """One node's dry-run plan, or why it could not be made."""

    node: str
    plan: dict[str, Any] | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        if self.plan is not None:
            return self.plan
        error = self.error
        return {"node": self.node, "error": one_line(error),
                "error_kind": type(error).__name__,
                "exit_code": int(getattr(error, "exit_code", 1))}


def select_nodes(fleet: Fleet, names: Sequence[str] = (), region: str | None = None,
                 everything: bool = False) -> list[str]:
    """The nodes a command is about: those named (in that order, each once), a region's, or
    all of the fleet's (sorted). Exactly one of the three ways; unknown names are refused
    before anything runs."""
    ways = sum((bool(names), region is not None, everything))
    if ways == 0:
        raise ConfigError("name the nodes, or pass --region REGION or --all")
    if ways > 1:
        raise ConfigError("name nodes, or pass --region or --all: one of the three, not several")
    if names:
        return [fleet.node(name).name for name in dict.fromkeys(names)]
    if region is not None:
        if region not in fleet.regions:
            known = ", ".join(sorted(fleet.regions)) or "none"
            raise ConfigError(f"unknown region {region!r} in fleet {fleet.name!r}; known "
                              f"regions: {known}")
        chosen = sorted(node.name for node in fleet.nodes_in_region(region))
        if not chosen:
            raise ConfigError(f"region {region!r} has no nodes in fleet {fleet.name!r}")
        return chosen
    if not fleet.nodes:
        raise ConfigError(f"fleet {fleet.name!r} has no nodes")
    return sorted(fleet.nodes)


def provider_limits(fleet: Fleet, names: Sequence[str]) -> dict[str, int]:
    """Provider name → how many of its nodes may run at once, for providers that say so."""
    limits: dict[str, int] = {}
    for provider in {fleet.node(name).provider for name in names}:
        config = fleet.providers.get(provider)
        declared = config.settings.get("max_parallel") if config else None
        if declared is None:
            driver = DRIVERS.get(config.driver if config else provider)
            declared = driver.max_parallel if driver else None
        if declared is not None:
            limits[provider] = int(declared)
    return limits


T = TypeVar("T")
R = TypeVar("R")


def run_bounded(items: Sequence[T], work: Callable[[T], R], *, parallel: int,
                group: Callable[[T], str] = lambda item: "",
                limits: Mapping[str, int] | None = None) -> list[R]:
    """Run `work` on every item in threads, at most `parallel` at once and at most
    `limits[group(item)]` of one group at once; items start in order, except that one whose
    group is full lets later items of other groups go first. Returns results in item order.

    `work` should not raise; if it does (a bug), the others still finish and the first such
    exception is raised afterwards.
    """
    if parallel < 1:
        raise ConfigError(f"parallel must be 1 or more, not {parallel}")
    if len(items) == 1:
        # One node runs in the calling thread, as it always has: ^C interrupts it where it
        # stands and its own clean-up runs.
        return [work(items[0])]
    limits = dict(limits or {})
    results: dict[int, R] = {}
    problems: list[BaseException] = []
    pending = list(range(len(items)))
    running: Counter[str] = Counter()
    active = 0
    changed = threading.Condition()

    def run(index: int, key: str) -> None:
        nonlocal active
        try:
            results[index] = work(items[index])
        except BaseException as error:
            problems.append(error)
        finally:
            with changed:
                running[key] -= 1
                active -= 1
                changed.notify_all()

    def startable() -> int | None:
        if active >= parallel:
            return None
        for index in pending:
            key = group(items[index])
            if running[key] < limits.get(key, parallel):
                return index
        return None

    with changed:
        while pending or active:
            index = startable()
            if index is None:
                changed.wait()
                continue
            pending.remove(index)
            key = group(items[index])
            running[key] += 1
            active += 1
            # Daemon threads: ^C ends the command now instead of after the longest wait of
            # a running node (minutes); each node's recorded state lets the next run resume.
            threading.Thread(target=run, args=(index, key), daemon=True,
                             name=f"clonefleet-node-{index}").start()
    if problems:
        raise problems[0]
    return [results[index] for index in range(len(items))]


def build_provisioner(fleet: Fleet, store: StateStore, state_dir: Path, node_name: str, *,
                      log: Callable[[str], None],
                      progress: Callable[[str, int, int], None] | None = None,
                      on_step: Callable[[str, str], None] | None = None,
                      deploy_ref: str = DEFAULT_DEPLOY) -> Provisioner:
    """The `Provisioner` for one node, with its own provider driver instance."""
    node = fleet.node(node_name)
    provider = provider_for(fleet, node, state_dir, log)
    return Provisioner(fleet, store, state_dir, provider, fleet_keystore(state_dir, store),
                       log=log, progress=progress, on_step=on_step, deploy_ref=deploy_ref)


class FleetRun:
    """`provision` (and `deploy`) over several nodes of one fleet.

    `run_node(name, wipe)` provisions one node and returns its report; the default builds
    the node's `Provisioner` and reports its log, steps and progress as events. Tests of the
    scheduling inject their own.
    """

    def __init__(self, fleet: Fleet, store: StateStore, state_dir: Path, *,
                 sink: EventSink | None = None, parallel: int = DEFAULT_PARALLEL,
                 run_node: Callable[[str, bool], ProvisionReport] | None = None,
                 clock: Callable[[], float] = time.time,
                 deploy_ref: str = DEFAULT_DEPLOY) -> None:
        self.fleet = fleet
        self.deploy_ref = deploy_ref  # what provision's last step applies
        self.store = store
        self.state_dir = state_dir
        self.parallel = parallel
        self.clock = clock
        self._sink = sink or (lambda event: None)
        self._sink_lock = threading.Lock()
        self._run_node = run_node

    def emit(self, node: str, kind: EventKind, **fields: Any) -> None:
        with self._sink_lock:
            self._sink(Event(node, kind, self.clock(), fields))

    # -- dry run ---------------------------------------------------------------------------

    def plan(self, names: Sequence[str], *, wipe: bool = False) -> list[PlanOutcome]:
        """Every node's plan (nothing is touched); a node whose plan fails says why."""
        outcomes = []
        for name in names:
            try:
                provisioner = build_provisioner(self.fleet, self.store, self.state_dir, name,
                                                log=lambda message: None)
                outcomes.append(PlanOutcome(name, plan=provisioner.plan(name, wipe=wipe)))
            except Exception as error:
                outcomes.append(PlanOutcome(name, error=error))
        return outcomes

    # -- provisioning ----------------------------------------------------------------------

    def provision(self, names: Sequence[str], *, wipe: bool = False) -> FleetResult:
        """Provision `names` concurrently; every node ends with an outcome, none raises."""
        started = time.monotonic()
        planned = {name: self._planned(name, wipe) for name in names}
        if self._run_node is None:
            self._prepare_shared(planned)
        run_node = self._run_node or self._provision_node
        several = len(names) > 1

        def work(name: str) -> NodeOutcome:
            return self._one(name, planned[name], wipe, run_node, several)

        outcomes = run_bounded(list(names), work, parallel=self.parallel,
                               group=lambda name: self.fleet.node(name).provider,
                               limits=provider_limits(self.fleet, names))
        return FleetResult(outcomes, self.parallel, time.monotonic() - started)

    def _planned(self, name: str, wipe: bool) -> tuple[str | None, list[str]]:
        record = self.store.get(name)
        current = record.state if record else None
        return current, remaining_steps(current, wipe)

    def _prepare_shared(self, planned: Mapping[str, tuple[str | None, list[str]]]) -> None:
        """Create what every node's first real step would otherwise create at the same time
        (the operator key, the keystore's identity): both refuse to be created twice."""
        working = [steps for _, steps in planned.values() if steps]
        if len(working) < 2:
            return  # one node alone creates them as it always has
        ensure_operator_key(self.fleet.ssh_key, self.state_dir)
        if sum("install" in steps for steps in working) > 1:
            Keystore(self.state_dir / "keystore").ensure_identity()

    def _one(self, name: str, planned: tuple[str | None, list[str]], wipe: bool,
             run_node: Callable[[str, bool], ProvisionReport], several: bool) -> NodeOutcome:
        current, steps = planned
        self.emit(name, "start", from_state=current, steps=steps)
        # Wall clock as the state store records steps: this run's records come after it.
        began_wall, began = time.time(), time.monotonic()
        report: ProvisionReport | None = None
        error: BaseException | None = None
        try:
            report = run_node(name, wipe)
        except Exception as caught:
            error = caught
            if several and not isinstance(caught, ClonefleetError):
                # A bug, not something the user can fix: keep its traceback in view, since
                # the other nodes go on and the run ends with a summary instead.
                self.emit(name, "log", message="".join(traceback.format_exception(caught)))
        outcome = NodeOutcome(name, state=None, seconds=time.monotonic() - began,
                              report=report, error=error)
        try:
            record = self.store.get(name)
            outcome.state = record.state if record else None
            if error is not None:
                this_run = [step for step in self.store.steps(name) if step.at >= began_wall]
                failed = [step.step for step in this_run if step.status == "failed"]
                outcome.failed_step = failed[-1] if failed else None
                outcome.done_steps = [(step.step, step.seconds) for step in this_run
                                      if step.status == "done"]
        except Exception as caught:  # the store itself failing must not hide the node's end
            outcome.error = outcome.error or caught
        self.emit(name, "result", **outcome.summary())
        return outcome

    def _provision_node(self, name: str, wipe: bool) -> ProvisionReport:
        shown = {"percent": -1}

        def progress(what: str, done: int, total: int) -> None:
            # At most one event per percent: the installer reports every chunk it sends.
            percent = int(done * 100 / total) if total else 100
            if percent != shown["percent"] or done == total:
                shown["percent"] = percent
                self.emit(name, "progress", what=what.removeprefix(f"{name}: "), done=done,
                          total=total, percent=percent)

        provisioner = build_provisioner(
            self.fleet, self.store, self.state_dir, name,
            log=lambda message: self.emit(name, "log", message=message), progress=progress,
            on_step=lambda node, step: self.emit(node, "step", step=step),
            deploy_ref=self.deploy_ref)
        return provisioner.provision(name, wipe=wipe)

    # -- deploy ----------------------------------------------------------------------------

    def deploy(self, names: Sequence[str], deploy_ref: str) -> dict[str, DeployResult]:
        """Apply `deploy_ref` to `names` (one pyinfra run for all of them, as `run_deploy`),
        with a start, a step and a result event per node. Refused (NotProvisionedError) when
        none of them has a recorded SSH address."""
        require_addresses(self.fleet, self.store, names)
        for name in names:
            record = self.store.get(name)
            self.emit(name, "start", from_state=record.state if record else None,
                      steps=["deploy"])
            self.emit(name, "step", step="deploy")
        began = time.monotonic()
        try:
            results = run_deploy(self.fleet.path, list(names), deploy_ref)
        except ClonefleetError as error:
            for name in names:
                self._deploy_result(name, began, None, error)
            raise
        for name in names:
            self._deploy_result(name, began, results.get(name), None)
        return results

    def diff(self, names: Sequence[str], deploy_ref: str) -> dict[str, DiffResult]:
        """What `deploy_ref` would change on `names`, changing nothing (`deploy --diff`)."""
        require_addresses(self.fleet, self.store, names)
        return dry_run_deploy(self.fleet.path, list(names), deploy_ref)

    def _deploy_result(self, name: str, began: float, result: DeployResult | None,
                       error: ClonefleetError | None) -> None:
        fields: dict[str, Any] = {"ok": True, "failed_step": None, "error": None,
                                  "error_kind": None, "exit_code": 0}
        if error is not None or result is None or result.failed:
            problem = error or DeployError(describe_failure(result) if result is not None
                                           else "the deploy reported nothing for this node")
            fields = {"ok": False, "failed_step": "deploy",
                      "error": one_line(problem),
                      "error_kind": type(problem).__name__, "exit_code": problem.exit_code}
        self.emit(name, "result", state=None, seconds=round(time.monotonic() - began, 1),
                  changed=len(result.changed) if result else 0,
                  unchanged=result.unchanged if result else 0, **fields)
