"""`clonefleet update` without `--dry-run`: the rollout itself, batch after batch, resumable.

Sequence, under the fleet's rollout lock (`clonefleet.rollout.lock`) from start to end:
1. a new rollout refuses while an earlier one stopped unfinished (resume it instead); it
   makes the plan (`clonefleet.rollout.plan`) and records the run (`progress.RunRecord`)
   with the nodes to update in the plan's order; `--resume` reads that record instead;
2. nodes this run took out of DNS and did not bring back (a crash, Ctrl-C, a failure) are
   finished first, all at once: they are out already, so they cost no region anything more;
3. then, before every batch, the recorded states are read again and the next batch is made
   from them (`batches.make_batches`): a node drained meanwhile by anyone else counts
   against its region, and while any region is below its minimum nothing proceeds. When no
   node can go, the rollout waits (re-reading the store every `poll_seconds`) for at most
   `wait_seconds`, then halts (`halted-waiting`) naming every reason;
4. a batch's nodes run their steps in parallel (`node_steps`); a node whose step fails stays
   drained with the reason recorded, an alert goes to the fleet's alert URLs, and once more
   nodes failed than `max_failures` allows, the rollout halts after the batch
   (`halted-on-failure`);
5. Ctrl-C (or a lost lock) asks every node to stop after its current step; the run is
   recorded `interrupted` and the lock released. Nothing is ever left drained without a
   reason: the drain's own reason names the rollout and `clonefleet update --resume`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from threading import Event as Flag
from typing import TYPE_CHECKING, Literal

from clonefleet.errors import ConfigError, LeaseLost
from clonefleet.inventory import Fleet
from clonefleet.rollout import lock as rollout_lock
from clonefleet.rollout.batches import RegionLimits, make_batches
from clonefleet.rollout.node_steps import Deferred, NodeRun, NodeUpdate, StepFailed, Stopped
from clonefleet.rollout.plan import RolloutPlan, node_statuses
from clonefleet.rollout.progress import (
    PROGRESS_FACT,
    RUN_FACT,
    UNDRAIN,
    Progress,
    RunOptions,
    RunRecord,
    next_steps,
    unfinished,
)
from clonefleet.rollout.report import (
    NodeReport,
    RolloutReport,
    RolloutStopped,
    Status,
    resume_hint,
)
from clonefleet.state import FLEET_FACTS, StateStore

if TYPE_CHECKING:
    from clonefleet.dnsmap.endpoints import Endpoints

EventKind = Literal["plan", "batch", "step", "node", "waiting", "stopping", "halt", "note"]


@dataclass(frozen=True)
class Event:
    """What the display follows: a batch starting, a node's step, a wait, the end."""

    kind: EventKind
    batch: int = 0
    nodes: tuple[str, ...] = ()
    node: str = ""
    step: str = ""
    status: str = ""
    detail: str = ""


EventSink = Callable[[Event], None]


class Notifier:
    """The fleet's alert channel: smartwatch's apprise sender, the same URLs."""

    def __init__(self, urls: Sequence[str]) -> None:
        from smartwatch.notify import AppriseNotifier

        try:
            self.sender = AppriseNotifier(tuple(urls))
        except ValueError as error:
            raise ConfigError(f"fleet.alert_urls: {error}; fix the URL (apprise syntax)") \
                from None

    def send(self, title: str, body: str) -> bool:
        from smartwatch.notify import Notice

        try:
            return self.sender.send(Notice(kind="rollout", key="rollout", severity="critical",
                                           title=title, body=body))
        except Exception:  # an alert that cannot go out must not stop the rollout's record
            return False


class RolloutUnfinished(ConfigError):
    """An earlier rollout stopped before its end: it is resumed, not started over."""


@dataclass
class Rollout:
    fleet: Fleet
    store: StateStore
    state_dir: Path
    sink: EventSink = lambda event: None
    notifier: Notifier | None = None  # default: one for the fleet's alert URLs, if any
    endpoints: Endpoints | None = None  # the DNS servers; default: the store's
    dns_timeout: float = 120.0
    boot_timeout: float | None = None
    poll_seconds: float = 5.0
    lock_ttl: float = rollout_lock.DEFAULT_TTL
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    stop: Flag = field(default_factory=Flag)
    alerts_sent: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.notifier is None and self.fleet.alert_urls:
            self.notifier = Notifier(self.fleet.alert_urls)

    # -- entry points ----------------------------------------------------------------------

    def start(self, make_plan: Callable[[], RolloutPlan], options: RunOptions, *,
              take_over: bool = False) -> RolloutReport:
        """Take the lock, make the plan, record the run and roll it."""
        with rollout_lock.take(self.store, take_over=take_over, ttl=self.lock_ttl) as held:
            earlier = RunRecord.from_fact(self.store.get_fact(FLEET_FACTS, RUN_FACT))
            if earlier is not None and not earlier.finished:
                raise RolloutUnfinished(
                    f"rollout {earlier.id} (started {_when(earlier.started_at)} UTC by "
                    f"{earlier.by}) stopped unfinished ({earlier.status}"
                    + (f": {earlier.halt_reason}" if earlier.halt_reason else "")
                    + "); run `clonefleet update --resume` to finish it first")
            plan = make_plan()
            queue, left_out = _queue(plan)
            owner = held.owner
            record = RunRecord(owner.generation, self.clock(), f"{owner.user}@{owner.host}",
                               options, tuple(queue))
            self.store.set_fact(FLEET_FACTS, RUN_FACT, record.as_fact())
            self.sink(Event("plan", nodes=tuple(queue),
                            detail=f"rollout {record.id}: {len(queue)} node(s) to update"))
            return self._execute(record, held, left_out)

    def resume(self, *, take_over: bool = False) -> RolloutReport:
        """Take the lock and continue the recorded unfinished run where it stopped."""
        with rollout_lock.take(self.store, take_over=take_over, ttl=self.lock_ttl) as held:
            record = RunRecord.from_fact(self.store.get_fact(FLEET_FACTS, RUN_FACT))
            if record is None or record.finished:
                raise ConfigError("--resume: no unfinished rollout is recorded; run "
                                  "`clonefleet update` to start one")
            record = replace(record, status="running", halt_reason="")
            self.store.set_fact(FLEET_FACTS, RUN_FACT, record.as_fact())
            self.sink(Event("plan", nodes=record.queue,
                            detail=f"resuming rollout {record.id} (started "
                                   f"{_when(record.started_at)} UTC by {record.by})"))
            return self._execute(record, held, {})

    # -- the run -------------------------------------------------------------------------------

    def _execute(self, record: RunRecord, held: rollout_lock.RolloutLock,
                 left_out: dict[str, NodeReport]) -> RolloutReport:
        started = time.monotonic()
        owner = held.owner
        context = NodeRun(self.fleet, self.store, self.state_dir, record.id,
                          actor=f"clonefleet update (rollout {record.id}, "
                                f"{owner.user}@{owner.host})",
                          everything=record.options.everything, endpoints=self.endpoints,
                          dns_timeout=self.dns_timeout, boot_timeout=self.boot_timeout,
                          log=lambda line: self.sink(Event("note", detail=line)))
        reports: dict[str, NodeReport] = {}
        batches: list[tuple[str, ...]] = []
        failures = 0
        status: Status = "done"
        halt_reason = ""
        try:
            states = self._states()
            progress = {node: self._progress(node) for node in record.queue}
            for node in record.queue:
                entry = progress[node]
                if entry is not None and entry.run == record.id and UNDRAIN in entry.done \
                        and states.get(node) == "active":
                    reports[node] = NodeReport.from_progress(node, self._region(node), entry,
                                                             "done")
            left = unfinished(progress, states, record.id)
            if left:
                batches.append(tuple(left))
                failures += self._batch(0, tuple(left), context, reports, held)
            pending = [node for node in record.queue if node not in reports]
            waiting_since: float | None = None
            number = 0
            while pending and failures <= record.options.max_failures:
                self._check(held)
                statuses = {status.name: status for status in node_statuses(self.fleet,
                                                                             self.store)}
                for node in list(pending):
                    if node not in statuses:
                        reports[node] = NodeReport(node, "", "skipped",
                                                   reason=f"{node} is no longer in the fleet "
                                                          "file")
                        pending.remove(node)
                    elif not statuses[node].active:
                        found = statuses[node]
                        reports[node] = NodeReport(
                            node, found.region, "skipped",
                            reason=f"{node} is {found.state}"
                                   + (f" ({found.reason})" if found.reason else "")
                                   + "; only active nodes are updated")
                        pending.remove(node)
                if not pending:
                    break
                options = record.options
                plan = make_batches(
                    {name: RegionLimits(name, region.min_active)
                     for name, region in self.fleet.regions.items()},
                    self.fleet.min_active_total, list(statuses.values()), pending,
                    batch_size=options.batch_size,
                    max_unavailable_per_region=options.max_unavailable_per_region)
                if not plan.batches:
                    reasons = sorted({entry.reason.partition(" waits: ")[2] or entry.reason
                                      for entry in plan.blocked})
                    now = self.clock()
                    if waiting_since is None:
                        waiting_since = now
                        self.sink(Event("waiting", nodes=tuple(pending),
                                        detail="; ".join(reasons)))
                    if now - waiting_since >= options.wait_seconds:
                        status = "halted-waiting"
                        halt_reason = (f"no node could go for {options.wait_seconds:.0f} s: "
                                       + "; ".join(reasons))
                        break
                    self.sleep(max(0.0, min(self.poll_seconds,
                                            waiting_since + options.wait_seconds - now)))
                    continue
                number += 1
                batch = plan.batches[0]
                batches.append(batch)
                failures += self._batch(number, batch, context, reports, held)
                pending = [node for node in pending if node not in reports]
                if any(node in reports for node in batch):
                    waiting_since = None
                    continue
                # Every drain of the batch was refused (the DNS map's own rules, checked
                # at the drain): nothing changed; wait as when no node can go.
                now = self.clock()
                waiting_since = now if waiting_since is None else waiting_since
                if now - waiting_since >= record.options.wait_seconds:
                    status = "halted-waiting"
                    halt_reason = (f"the drains of {', '.join(batch)} were refused for "
                                   f"{record.options.wait_seconds:.0f} s (see the deferred "
                                   "steps)")
                    break
                self.sleep(self.poll_seconds)
            if status == "done" and failures > record.options.max_failures:
                failed = [node for node, report in reports.items() if report.result == "failed"]
                status = "halted-on-failure"
                halt_reason = (f"{failures} node(s) failed ({', '.join(failed)}), more than "
                               f"--max-failures {record.options.max_failures}")
        except (KeyboardInterrupt, Stopped, LeaseLost) as error:
            status = "interrupted"
            halt_reason = str(error) if isinstance(error, LeaseLost) else \
                "stopped by the operator"
        except BaseException as error:
            status = "interrupted"
            halt_reason = f"stopped by an error: {error}"
            self._finish(record, status, halt_reason)
            raise
        report = self._report(record, reports, left_out, batches, status, halt_reason,
                              time.monotonic() - started)
        self._finish(record, status, halt_reason)
        if status != "done":
            if status != "interrupted":
                self._alert(f"[CRITICAL] rollout {record.id} halted",
                            f"{halt_reason}\n\n{resume_hint(status)}")
            self.sink(Event("halt", status=status, detail=halt_reason))
            raise RolloutStopped(report, f"rollout {record.id} {status}: {halt_reason}; "
                                         f"{resume_hint(status)}")
        return report

    def _check(self, held: rollout_lock.RolloutLock) -> None:
        if self.stop.is_set():
            raise Stopped("stop requested")
        held.check()

    def _batch(self, number: int, nodes: tuple[str, ...], context: NodeRun,
               reports: dict[str, NodeReport], held: rollout_lock.RolloutLock) -> int:
        """Run one batch's nodes at once; return how many failed. Ctrl-C asks every node to
        stop after its current step and waits for that, then stops the rollout."""
        self.sink(Event("batch", batch=number, nodes=nodes))
        failures = 0
        interrupted = False
        with ThreadPoolExecutor(max_workers=len(nodes),
                                thread_name_prefix="clonefleet-update") as pool:
            futures: dict[Future[NodeReport | None], str] = {
                pool.submit(self._node, node, context): node for node in nodes}
            waiting = set(futures)
            while waiting:
                if held.lost is not None and not self.stop.is_set():
                    self.stop.set()  # another rollout may act now: stop after the step
                try:
                    done, waiting = wait(waiting, timeout=0.5, return_when=FIRST_COMPLETED)
                except KeyboardInterrupt:
                    interrupted = True
                    self.stop.set()
                    self.sink(Event("stopping", detail="finishing the current steps, then "
                                                       "stopping"))
                    continue
                for future in done:
                    node = futures[future]
                    report = future.result()
                    if report is not None:
                        reports[node] = report
                        failures += report.result == "failed"
        if interrupted or self.stop.is_set():
            held.check()  # a lost lock says so rather than "stopped"
            raise Stopped("stop requested")
        return failures

    def _node(self, node: str, context: NodeRun) -> NodeReport | None:
        """One node's steps; its report, or None when it was deferred (still pending)."""
        region = self._region(node)
        record = self.store.get(node)
        state = record.state if record else "ordered"
        progress = self._progress(node)
        pickup = next_steps(node, state, progress, context.run)
        if not pickup.steps:
            return NodeReport.from_progress(node, region, progress, "done") \
                if progress is not None and progress.run == context.run \
                and UNDRAIN in progress.done else \
                NodeReport(node, region, "skipped", reason=pickup.note)
        if pickup.note and progress is not None and progress.run == context.run:
            self.sink(Event("note", node=node, detail=pickup.note))
        mine = progress if progress is not None and progress.run == context.run and \
            state != "active" else Progress(context.run)
        update = NodeUpdate(context, node, mine, on_event=self._step_event, stop=self.stop)
        try:
            final = update.run(pickup.steps)
        except Deferred:
            return None
        except Stopped:
            return NodeReport.from_progress(node, region, update.progress, "stopped",
                                            reason="stopped by the operator")
        except StepFailed:
            failed = update.progress
            self._alert(f"[CRITICAL] {node}: update failed at {failed.failed_step}",
                        f"rollout {context.run}: {node} failed at {failed.failed_step}: "
                        f"{failed.error}\n\nThe node stays drained (out of DNS) with this "
                        "reason recorded. Fix it, then `clonefleet update --resume`.")
            return NodeReport.from_progress(node, region, failed, "failed")
        self.sink(Event("node", node=node, status="done"))
        return NodeReport.from_progress(node, region, final, "done")

    def _step_event(self, node: str, step: str, status: str, detail: str) -> None:
        self.sink(Event("step", node=node, step=step, status=status, detail=detail))

    # -- records -----------------------------------------------------------------------------

    def _states(self) -> dict[str, str]:
        return {record.name: record.state for record in self.store.all()}

    def _progress(self, node: str) -> Progress | None:
        return Progress.from_fact(self.store.get_fact(node, PROGRESS_FACT))

    def _region(self, node: str) -> str:
        return self.fleet.nodes[node].region if node in self.fleet.nodes else ""

    def _finish(self, record: RunRecord, status: Status, halt_reason: str) -> None:
        self.store.set_fact(FLEET_FACTS, RUN_FACT, replace(
            record, status=status, halt_reason=halt_reason).as_fact())

    def _alert(self, title: str, body: str) -> None:
        self.alerts_sent.append(title)
        if self.notifier is not None:
            self.notifier.send(title, body)

    def _report(self, record: RunRecord, reports: dict[str, NodeReport],
                left_out: dict[str, NodeReport], batches: list[tuple[str, ...]],
                status: Status, halt_reason: str, seconds: float) -> RolloutReport:
        nodes = []
        for node in record.queue:
            if node in reports:
                nodes.append(reports[node])
            else:
                progress = self._progress(node)
                mine = progress if progress is not None and progress.run == record.id \
                    else None
                nodes.append(NodeReport.from_progress(
                    node, self._region(node), mine, "not started" if mine is None else None,
                    reason="the rollout stopped before it" if mine is None else ""))
        nodes.extend(left_out.values())
        return RolloutReport(record.id, status, tuple(nodes), tuple(batches), seconds,
                             halt_reason)


def _queue(plan: RolloutPlan) -> tuple[list[str], dict[str, NodeReport]]:
    """The nodes a new run updates (active ones with work, in the plan's batch order), and a
    report for every other node of the plan saying why it is left out."""
    scheduled = plan.batches.scheduled
    blocked = {entry.node: entry.reason for entry in plan.batches.blocked}
    queue = list(scheduled)
    left_out: dict[str, NodeReport] = {}
    for entry in plan.nodes:
        if entry.node in queue:
            continue
        if entry.error:
            left_out[entry.node] = NodeReport(entry.node, entry.region, "skipped",
                                              reason=f"not read: {entry.error}")
        elif not entry.has_work:
            left_out[entry.node] = NodeReport(entry.node, entry.region, "skipped",
                                              reason="nothing to upgrade")
        elif entry.state == "active":
            queue.append(entry.node)  # waits for room in its region: batches are re-made
        else:
            left_out[entry.node] = NodeReport(entry.node, entry.region, "skipped",
                                              reason=blocked.get(entry.node, entry.state))
    return queue, left_out


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))
