"""`clonefleet update`: roll package updates across the fleet in safe batches.

Parses, calls `clonefleet.rollout` (plan, run, resume) and prints: the plan with
`--dry-run`; otherwise the rollout's live progress (`rollout_display`) and its final report.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING

import click

from clonefleet.cli import Context, pass_context
from clonefleet.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

    from clonefleet.rollout.plan import NodePlan, RolloutPlan
    from clonefleet.rollout.progress import RunOptions
    from clonefleet.rollout.report import RolloutReport

HELP = """Roll package updates across the fleet in safe batches.

\b
Reads on every node (or NODES) at once, over SSH with pinned host keys:
apt's simulated dist-upgrade (after apt-get update), /var/run/reboot-required
and needrestart's report. The plan: per node the packages to upgrade (Debian
security updates only; --all for every upgrade), whether it will reboot or
only restart services, and the batches: at most --batch-size nodes at once,
at most --max-unavailable-per-region nodes of a region out of service at once
(counting nodes already drained for any reason), never a region below its
min_active nor the fleet below min_active_total. --dry-run stops there.

\b
Then, batch after batch (the store re-read before each), per node: drain from
DNS and wait until every server stopped serving it plus TTL and grace; upgrade
(needrestart restarts services); reboot, unlock through Dropbear and wait for
sshd when the upgrade needs it; health check; undrain. A failing node stays
drained with the reason recorded, an alert goes to the fleet's alert_urls,
and the rollout halts once more than --max-failures nodes failed. While no
node can go (a region at its minimum, e.g. after a drain by smartwatch), it
waits at most --wait seconds, then halts. Ctrl-C finishes the steps under
way and stops; --resume continues where a rollout stopped (crash, Ctrl-C,
halt), finishing nodes left out of DNS first. One rollout at a time: a
second is refused naming the holder; a stale lock (a killed rollout) is taken
over only with --take-over-lock. See docs/rollout.md.

\b
Exit codes:
  0   every node was updated (or, with --dry-run, the plan covers every node)
  2   a bad option or node name; an unfinished rollout exists (use
      --resume); --resume with nothing to resume, or with an option it keeps
  3   another rollout holds the lock, or a stale lock needs --take-over-lock
  30  (--dry-run) some nodes could not be read; the plan covers the others
  31  (--dry-run) no node could be read
  40  halted: more nodes failed than --max-failures (they stay drained)
  41  halted: no node could go for --wait seconds (a region at its minimum)
  42  stopped by Ctrl-C or SIGTERM (or the lock was lost); --resume continues
"""


@click.command(help=HELP)
@click.argument("nodes", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Print the plan and stop.")
@click.option("--all", "everything", is_flag=True,
              help="Every upgrade, not only Debian security updates.")
@click.option("--batch-size", default=1, show_default=True, type=int,
              help="Nodes updated at once, fleet-wide.")
@click.option("--max-unavailable-per-region", default=1, show_default=True, type=int,
              help="Nodes of one region out of service at once, counting those already out.")
@click.option("--max-failures", default=0, show_default=True, type=click.IntRange(min=0),
              help="Failed nodes allowed before the rollout halts.")
@click.option("--wait", "wait_seconds", default=300.0, show_default=True,
              type=click.FloatRange(min=0),
              help="Seconds to wait while no node can go (a region at its minimum) before "
                   "halting.")
@click.option("--boot-timeout", type=click.FloatRange(min=1), default=None,
              help="Seconds a reboot may take to Dropbear, and after the unlock to sshd "
                   "(default: the provider's). A node silent past it is power-reset once "
                   "through its provider.")
@click.option("--resume", is_flag=True,
              help="Continue the rollout that stopped (with the options it started with).")
@click.option("--take-over-lock", is_flag=True,
              help="Take over the lock a crashed or killed rollout left behind.")
@click.option("--no-refresh", is_flag=True,
              help="Use the nodes' package lists as they are (no apt-get update).")
@pass_context
def update(ctx: Context, nodes: tuple[str, ...], dry_run: bool, everything: bool,
           batch_size: int, max_unavailable_per_region: int, max_failures: int,
           wait_seconds: float, boot_timeout: float | None, resume: bool,
           take_over_lock: bool, no_refresh: bool) -> None:
    from clonefleet.fleetrun import failure_error
    from clonefleet.rollout.plan import make_plan

    if resume:
        _refuse_changes_on_resume(dry_run, nodes)

    def plan_now() -> RolloutPlan:
        return make_plan(ctx.fleet, ctx.store, nodes, everything=everything,
                         batch_size=batch_size,
                         max_unavailable_per_region=max_unavailable_per_region,
                         refresh=not no_refresh)

    if dry_run:
        plan = plan_now()
        ctx.emit(plan.as_dict(), None)
        if not ctx.as_json:
            show_plan(plan)
        error = failure_error("update plan", len(plan.nodes),
                              [(entry.node, None) for entry in plan.unreadable])
        if error is not None:
            raise error
        return
    from clonefleet.rollout.progress import RunOptions

    _roll(ctx, plan_now, resume=resume, take_over=take_over_lock, boot_timeout=boot_timeout,
          run_options=RunOptions(everything, batch_size, max_unavailable_per_region,
                                 max_failures, wait_seconds))


# Options the recorded rollout keeps: given with --resume they would be silently ignored.
_KEPT_ON_RESUME = ("everything", "batch_size", "max_unavailable_per_region", "max_failures",
                   "wait_seconds", "no_refresh")


def _refuse_changes_on_resume(dry_run: bool, nodes: tuple[str, ...]) -> None:
    from click.core import ParameterSource

    command = click.get_current_context()
    given = [option.opts[0] for option in command.command.params
             if isinstance(option, click.Option) and option.name in _KEPT_ON_RESUME
             and command.get_parameter_source(option.name) not in
             (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)]
    given += ["NODES"] * bool(nodes) + ["--dry-run"] * dry_run
    if given:
        raise ConfigError("--resume continues the recorded rollout with the options it "
                          f"started with: drop {', '.join(given)} (only --boot-timeout and "
                          "--take-over-lock may change)")


def _roll(ctx: Context, plan_now: Callable[[], RolloutPlan], *, resume: bool, take_over: bool,
          boot_timeout: float | None, run_options: RunOptions) -> None:
    from clonefleet.cli.rollout_display import event_display
    from clonefleet.rollout.batches import check_limit
    from clonefleet.rollout.report import RolloutStopped
    from clonefleet.rollout.run import Rollout

    check_limit(run_options.batch_size, "--batch-size")
    check_limit(run_options.max_unavailable_per_region, "--max-unavailable-per-region")
    display = event_display(ctx.as_json)
    rollout = Rollout(ctx.fleet, ctx.store, ctx.state_dir, sink=display,
                      boot_timeout=boot_timeout)
    report: RolloutReport | None = None
    try:
        with _stop_on_signals():
            if resume:
                report = rollout.resume(take_over=take_over)
            else:
                report = rollout.start(plan_now, run_options, take_over=take_over)
    except RolloutStopped as stopped:
        display.close()
        _print_report(ctx, stopped.report)
        raise
    finally:
        display.close()
    _print_report(ctx, report)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Ctrl-C and SIGTERM (a service manager, a CI job's timeout) both stop the rollout after
    the steps under way. SIGINT is set explicitly: a process started in the background of a
    script inherits it ignored, and a rollout must stay stoppable. The handlers before are
    restored after."""
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only; nothing to set
        return
    before = {number: signal.signal(number, interrupt)
              for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


def _print_report(ctx: Context, report: RolloutReport) -> None:
    from clonefleet.cli.rollout_display import show_report

    ctx.emit(report.as_dict(), None)
    if not ctx.as_json:
        show_report(report)


def _packages(plan: NodePlan) -> str:
    if plan.error:
        return plan.error
    lines = [f"{change.name} {change.old_version or '(new)'} → {change.new_version}"
             f" ({', '.join(change.suites)})" for change in plan.packages]
    if plan.skipped_upgrades:
        lines.append(f"({plan.skipped_upgrades} other upgrade(s) left out: not security "
                     "updates; --all to include them)")
    return "\n".join(lines) or "nothing to upgrade"


def _after(plan: NodePlan) -> str:
    if plan.action == "reboot":
        return "reboot: " + "; ".join(plan.reboot_reasons)
    if plan.action == "restart":
        services = ", ".join(plan.restart_services) or "as needrestart decides"
        return f"restart services: {services}" if plan.needrestart else \
            "restart services (needrestart is not installed: which ones cannot be told)"
    return "-"


def show_plan(plan: RolloutPlan) -> None:
    from clonefleet.cli.display import print_table, status_text

    batch_of = {node: index for index, batch in enumerate(plan.batches.batches, 1)
                for node in batch}
    blocked = {entry.node: entry.reason for entry in plan.batches.blocked}
    rows = []
    for node in plan.nodes:
        batch = str(batch_of[node.node]) if node.node in batch_of else "-"
        rows.append((status_text(node.action, good=("none",), bad=("unknown",)),
                     node.node, node.region, node.state, batch, _packages(node),
                     blocked.get(node.node, _after(node))))
    print_table(["ACTION", "NODE", "REGION", "STATE", "BATCH", "PACKAGES", "AFTER / WHY NOT"],
                rows)
    selection = "every upgrade" if plan.everything else "security updates only"
    click.echo(f"{len(plan.batches.batches)} batch(es) of at most {plan.batch_size} node(s), "
               f"at most {plan.max_unavailable_per_region} per region; {selection}; "
               f"expected reboots: {sum(node.reboot for node in plan.nodes)}")
    for index, members in enumerate(plan.batches.batches, 1):
        click.echo(f"  batch {index}: {', '.join(members)}")
    for entry in plan.batches.blocked:
        click.echo(f"  not in any batch: {entry.reason}")
    for note in plan.notes:
        click.echo(f"  note: {note}")
    if plan.lock_holder:
        click.echo(f"  rollout lock: held by {plan.lock_holder}")


def register(group: click.Group) -> None:
    group.add_command(update)
