"""`clonefleet update`: roll package updates across the fleet in safe batches.

This version makes the plan only (`--dry-run`); the rollout itself is refused in one line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from clonefleet.cli import Context, pass_context
from clonefleet.errors import ConfigError

if TYPE_CHECKING:
    from clonefleet.rollout.plan import NodePlan, RolloutPlan

HELP = """Roll package updates across the fleet in safe batches (plan only, for now).

\b
Reads on every node (or NODES) at once, over SSH with pinned host keys:
apt's simulated dist-upgrade (after apt-get update), /var/run/reboot-required
and needrestart's report. Prints per node the packages to upgrade (Debian
security updates only; --all for every upgrade), whether it will reboot or
only restart services, and the batches it would go in: at most --batch-size
nodes at once, at most --max-unavailable-per-region nodes of a region out of
service at once (counting nodes already drained for any reason), never a
region below its min_active nor the fleet below min_active_total. Nothing on
the nodes changes but their package lists. See docs/rollout.md.

\b
Exit codes:
  0   the plan was made for every node asked for
  2   a bad option or node name, or run without --dry-run (only the plan
      is available in this version)
  30  some nodes could not be read (each one's row says why); the plan
      covers the others
  31  no node could be read
"""


@click.command(help=HELP)
@click.argument("nodes", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Print the plan and stop (required for now).")
@click.option("--all", "everything", is_flag=True,
              help="Every upgrade, not only Debian security updates.")
@click.option("--batch-size", default=1, show_default=True, type=int,
              help="Nodes updated at once, fleet-wide.")
@click.option("--max-unavailable-per-region", default=1, show_default=True, type=int,
              help="Nodes of one region out of service at once, counting those already out.")
@click.option("--no-refresh", is_flag=True,
              help="Use the nodes' package lists as they are (no apt-get update).")
@pass_context
def update(ctx: Context, nodes: tuple[str, ...], dry_run: bool, everything: bool,
           batch_size: int, max_unavailable_per_region: int, no_refresh: bool) -> None:
    from clonefleet.fleetrun import failure_error
    from clonefleet.rollout.plan import make_plan

    if not dry_run:
        raise ConfigError("clonefleet update: only the plan is available in this version; "
                          "run it with --dry-run")
    plan = make_plan(ctx.fleet, ctx.store, nodes, everything=everything,
                     batch_size=batch_size,
                     max_unavailable_per_region=max_unavailable_per_region,
                     refresh=not no_refresh)
    ctx.emit(plan.as_dict(), None)
    if not ctx.as_json:
        show_plan(plan)
    error = failure_error("update plan", len(plan.nodes),
                          [(entry.node, None) for entry in plan.unreadable])
    if error is not None:
        raise error


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
