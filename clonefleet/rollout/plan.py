"""What `clonefleet update` would do, per node and in which batches, without changing anything.

Facts are read on every node at once (`clonefleet.rollout.gather`, pyinfra in its own
process, pinned host keys): apt's simulated dist-upgrade, the reboot-required flag and
needrestart's report. From those, per node (`node_plan`, pure): the packages to upgrade
(Debian security updates only unless `everything`), whether the node will need a reboot and
why, or only service restarts (needrestart decides those after the upgrade; the services it
already lists now are shown). Then the batches (`clonefleet.rollout.batches`) from the nodes'
recorded states and the fleet's minimums.

Invariant: a node whose facts could not be read is never in a batch; its plan says why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from clonefleet.child_run import run_child
from clonefleet.errors import ClonefleetError
from clonefleet.inventory import Fleet
from clonefleet.rollout import lock
from clonefleet.rollout.apt import parse_simulation, reboot_packages
from clonefleet.rollout.batches import BatchPlan, NodeStatus, RegionLimits, make_batches
from clonefleet.rollout.restarts import parse_needrestart, parse_reboot_flag
from clonefleet.state import StateStore

GATHER_TIMEOUT = 900
Action = Literal["reboot", "restart", "none", "unknown"]
# A fact's raw result as the gather process reports it: {"exit": int, "output": str}.
Gathered = dict[str, Any]


@dataclass(frozen=True)
class PackageChange:
    name: str
    old_version: str | None  # None: newly installed
    new_version: str
    suites: tuple[str, ...]
    security: bool


@dataclass(frozen=True)
class NodePlan:
    node: str
    region: str
    state: str
    error: str = ""  # why the node's facts could not be read ("" when they were)
    packages: tuple[PackageChange, ...] = ()  # what the update would upgrade or install
    skipped_upgrades: int = 0  # upgrades left out (not security updates, without --all)
    removals: tuple[str, ...] = ()
    reboot_reasons: tuple[str, ...] = ()
    restart_services: tuple[str, ...] = ()  # as needrestart lists them now
    needrestart: bool = True  # installed on the node

    @property
    def reboot(self) -> bool:
        return bool(self.reboot_reasons)

    @property
    def action(self) -> Action:
        if self.error:
            return "unknown"
        if self.reboot:
            return "reboot"
        if self.packages or self.restart_services:
            return "restart"
        return "none"

    @property
    def has_work(self) -> bool:
        return self.action in ("reboot", "restart")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reboot": self.reboot, "action": self.action}


@dataclass(frozen=True)
class RolloutPlan:
    nodes: tuple[NodePlan, ...]
    batches: BatchPlan
    everything: bool
    batch_size: int
    max_unavailable_per_region: int
    lock_holder: str = ""  # who holds the rollout lock now ("" when nobody)
    notes: tuple[str, ...] = field(default=())

    def node(self, name: str) -> NodePlan:
        return next(plan for plan in self.nodes if plan.node == name)

    @property
    def unreadable(self) -> list[NodePlan]:
        return [plan for plan in self.nodes if plan.error]

    def as_dict(self) -> dict[str, Any]:
        return {
            "selection": "all upgrades" if self.everything else "security updates",
            "batch_size": self.batch_size,
            "max_unavailable_per_region": self.max_unavailable_per_region,
            "batches": [list(batch) for batch in self.batches.batches],
            "blocked": [asdict(entry) for entry in self.batches.blocked],
            "nodes": [plan.as_dict() for plan in self.nodes],
            "expected_reboots": [plan.node for plan in self.nodes if plan.reboot],
            "unreadable": [plan.node for plan in self.unreadable],
            "lock_holder": self.lock_holder or None,
            "notes": list(self.notes),
        }


def _fact_text(facts: dict[str, Gathered], name: str) -> tuple[str | None, str]:
    """(output, error) of one gathered fact; error names the fact and its output's tail."""
    value = facts.get(name)
    if value is None:
        return None, f"{name}: not read"
    if int(value.get("exit", 255)) != 0:
        tail = " / ".join(str(value.get("output", "")).strip().splitlines()[-3:])
        return None, f"{name} failed (exit {value.get('exit')}): {tail or 'no output'}"
    return str(value.get("output", "")), ""


def node_plan(node: str, region: str, state: str, gathered: Gathered, *,
              everything: bool = False) -> NodePlan:
    """Given one node's gathered facts (`{"connected", "error", "facts"}`), its plan."""
    if gathered.get("error") or not gathered.get("connected", False):
        return NodePlan(node, region, state, error=str(gathered.get("error") or
                                                        "could not connect"))
    facts = gathered.get("facts", {})
    simulation_text, error = _fact_text(facts, "upgrades")
    if simulation_text is None:
        return NodePlan(node, region, state, error=error)
    simulation = parse_simulation(simulation_text)
    selected = simulation.selected(everything)
    reasons = [f"upgrades {name}" for name in reboot_packages(selected)]
    flag_text, _ = _fact_text(facts, "reboot_required")
    if flag_text is not None:
        flag = parse_reboot_flag(flag_text)
        if flag.required:
            asked = f" (asked by {', '.join(flag.packages)})" if flag.packages else ""
            reasons.append(f"/var/run/reboot-required is present{asked}")
    restart_text, _ = _fact_text(facts, "needrestart")
    restarts = parse_needrestart(restart_text or "NEEDRESTART-MISSING")
    if restarts.kernel_pending:
        reasons.append(f"needrestart: the running kernel {restarts.running_kernel or '?'} is "
                       f"not the newest installed ({restarts.kernel_description})")
    return NodePlan(
        node, region, state,
        packages=tuple(PackageChange(upgrade.name, upgrade.old_version, upgrade.new_version,
                                     upgrade.suites, upgrade.security)
                       for upgrade in selected),
        skipped_upgrades=len(simulation.upgrades) - len(selected),
        removals=simulation.removals if everything else (),
        reboot_reasons=tuple(reasons),
        restart_services=restarts.services,
        needrestart=restarts.installed)


def node_statuses(fleet: Fleet, store: StateStore) -> list[NodeStatus]:
    """Every node of the fleet as the batching sees it, from the recorded states."""
    statuses = []
    for name in sorted(fleet.nodes):
        record = store.get(name)
        state = record.state if record else "ordered"
        served = state == "active" or any(step.to_state == "active"
                                          for step in store.history(name))
        statuses.append(NodeStatus(name, fleet.nodes[name].region, state, served=served,
                                   reason=_by(record.actor, record.reason) if record else ""))
    return statuses


def _by(actor: str, reason: str) -> str:
    return ": ".join(part for part in (actor, reason) if part)


def run_gather(fleet_path: Path, nodes: Sequence[str], refresh: bool) -> dict[str, Gathered]:
    """Every node's facts, read by `clonefleet.rollout.gather` in its own process."""
    run = run_child("clonefleet.rollout.gather", fleet_path,
                    [*([] if refresh else ["--no-refresh"]), *nodes], GATHER_TIMEOUT)
    if run.data is None:
        raise ClonefleetError(f"could not read the nodes' facts: {' / '.join(run.tail(5))}")
    data: dict[str, Gathered] = run.data
    return data


def make_plan(fleet: Fleet, store: StateStore, nodes: Sequence[str] = (), *,
              everything: bool = False, batch_size: int = 1,
              max_unavailable_per_region: int = 1, refresh: bool = True,
              gather: Callable[[Path, Sequence[str], bool], dict[str, Gathered]] | None = None,
              ) -> RolloutPlan:
    """Given the fleet, its recorded states and the nodes to update (all when none are
    named), read every node's facts at once and return the plan. Limits are checked first."""
    from clonefleet.rollout.batches import check_limit

    check_limit(batch_size, "--batch-size")
    check_limit(max_unavailable_per_region, "--max-unavailable-per-region")
    statuses = {status.name: status for status in node_statuses(fleet, store)}
    # Named nodes are read whatever their state; by default, every node that is or has been
    # in service (a node never provisioned, or retired, has nothing to read).
    names = [fleet.node(name).name for name in dict.fromkeys(nodes)] or [
        status.name for status in statuses.values()
        if (status.active or status.served) and status.state != "retired"]
    if not names:
        raise ClonefleetError(f"no node of fleet {fleet.name!r} is or was in service; name "
                              "the nodes to plan for")
    gathered = (gather or run_gather)(fleet.path, names, refresh)
    plans = tuple(node_plan(name, statuses[name].region, statuses[name].state,
                            gathered.get(name, {"error": "no facts were returned"}),
                            everything=everything)
                  for name in names)
    regions = {name: RegionLimits(name, region.min_active)
               for name, region in fleet.regions.items()}
    batches = make_batches(regions, fleet.min_active_total, list(statuses.values()),
                           [plan.node for plan in plans if plan.has_work],
                           batch_size=batch_size,
                           max_unavailable_per_region=max_unavailable_per_region)
    owner, live = lock.current_owner(store)
    holder = ""
    if owner is not None:
        import time

        holder = owner.describe(time.time()) + ("" if live else " (stale)")
    notes = tuple(f"{plan.node}: needrestart is not installed; services to restart after the "
                  "upgrade cannot be told" for plan in plans
                  if not plan.error and not plan.needrestart)
    return RolloutPlan(plans, batches, everything, batch_size, max_unavailable_per_region,
                       holder, notes)
