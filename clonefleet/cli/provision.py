"""`clonefleet provision`, `unlock`, `deploy`: parse, call the core, print.

`provision` over several nodes (several NODEs, `--region`, `--all`) runs them at once through
`clonefleet.fleetrun` and ends with a table; with exactly one NODE named, its output and exit
code are what they have always been (the node's own error and exit code).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

import click
from rich.table import Column

from clonefleet.cli import Context, pass_context
from clonefleet.cli.display import print_table, progress_display, status_text
from clonefleet.deploy import CHANGES_PENDING, DEFAULT_DEPLOY, describe_failure
from clonefleet.errors import ConfigError, DeployError, one_line
from clonefleet.fleetrun import (
    DEFAULT_PARALLEL,
    FleetResult,
    FleetRun,
    PlanOutcome,
    build_provisioner,
    failure_error,
    report_as_dict,
    select_nodes,
)
from clonefleet.provision import Provisioner, ProvisionReport


def make_provisioner(ctx: Context, node_name: str) -> Provisioner:
    started = time.monotonic()

    def log(message: str) -> None:
        click.echo(f"[{time.monotonic() - started:7.1f}s] {message}", err=ctx.as_json)

    return build_provisioner(ctx.fleet, ctx.store, ctx.state_dir, node_name, log=log)


def _print_report(ctx: Context, report: ProvisionReport) -> None:
    data = report_as_dict(report)
    if ctx.as_json:
        ctx.emit(data)
        return
    if report.skipped:
        click.echo(f"{report.node}: nothing to do ({', '.join(report.skipped)}); state "
                   f"{report.final_state}")
        return
    click.echo(f"\n{report.node}: {report.final_state}. Step timings:")
    rows = [(step, f"{seconds:.1f} s") for step, seconds in report.steps]
    print_table(["STEP", Column("SECONDS", justify="right")],
                [*rows, ("total", f"{data['total_seconds']:.1f} s")], indent=2)
    _print_recovery_keys([(report.node, report.recovery_key)])


def _print_recovery_keys(keys: list[tuple[str, str]]) -> None:
    """The recovery keys this run installed ((node, key), "" for none): printed once here,
    stored nowhere."""
    for node, key in keys:
        if not key:
            continue
        click.echo(f"\n{node}: LUKS RECOVERY KEY (shown only now; clonefleet does not keep "
                   "it):\n"
                   f"\n    {key}\n\n"
                   "  Store it offline (on paper or in a safe), away from the controller. It "
                   "opens the\n  node's disk when the escrowed passphrase cannot (type it, "
                   "dashes included, at the\n  unlock prompt). Lost: `clonefleet keys recovery "
                   f"{node} --new` replaces it.")


def _print_plan(plan: dict[str, Any]) -> None:
    node = plan["node"]
    click.echo(f"{node} ({plan['provider']}), now {plan['current_state']}")
    for key in ("note", "warning"):
        if key in plan:
            click.echo(f"  {key}: {plan[key]}")
    click.echo(f"  steps: {' → '.join(plan['steps']) or 'none'}")
    install = plan.get("install")
    if isinstance(install, dict):
        click.echo(f"  wipe disks: {', '.join(install['wipe_disks'])}")
        click.echo(f"  raid1: {install['raid1']}")
        for partition in install["partitions"]:
            click.echo(f"  partition: {partition}")
        click.echo(f"  luks: {install['luks']}")
        click.echo(f"  kernel: {install['kernel_cmdline']}")
        click.echo(f"  packages: {' '.join(install['packages'])}")


def _print_plans(ctx: Context, outcomes: list[PlanOutcome]) -> None:
    if ctx.as_json:
        ctx.emit({"nodes": [outcome.as_dict() for outcome in outcomes],
                  "failed": [outcome.node for outcome in outcomes if not outcome.ok]})
        return
    for index, outcome in enumerate(outcomes):
        if index:
            click.echo("")
        if outcome.plan is not None:
            _print_plan(outcome.plan)
        else:
            click.echo(f"{outcome.node}: no plan: {one_line(outcome.error)}")


def _print_summary(ctx: Context, result: FleetResult) -> None:
    if ctx.as_json:
        ctx.emit(result.as_dict())
        return
    rows = []
    for outcome in result.outcomes:
        if outcome.ok:
            verdict = "nothing to do" if outcome.report and outcome.report.skipped else "ok"
        else:
            verdict = "FAILED"
        rows.append((outcome.node, outcome.state or "not provisioned", status_text(verdict),
                     f"{outcome.seconds:.1f} s", outcome.failed_step or "-",
                     outcome.message or "-"))
    click.echo("")
    print_table(["NODE", "STATE", "RESULT", Column("DURATION", justify="right"), "FAILED STEP",
                 "ERROR"], rows)
    click.echo(f"{len(result.succeeded)} of {len(result.outcomes)} nodes succeeded in "
               f"{result.seconds:.1f} s (at most {result.parallel} at once)")
    _print_recovery_keys([(outcome.node, outcome.recovery_key) for outcome in result.outcomes])


def _check_deploy_ref(deploy_ref: str) -> None:
    if ":" not in deploy_ref:
        raise ConfigError(f"--deploy {deploy_ref!r}: expected module:function, "
                          "e.g. deploys.full:node or deploys.base:base")


@click.command()
@click.argument("nodes", nargs=-1)
@click.option("--region", help="Every node of this region.")
@click.option("--all", "everything", is_flag=True, help="Every node of the fleet.")
@click.option("--parallel", type=click.IntRange(min=1), default=DEFAULT_PARALLEL,
              show_default=True,
              help="Nodes provisioned at once (a provider's max_parallel bounds its own).")
@click.option("--wipe", is_flag=True,
              help="Reinstall even if the node was installed before (erases its disks).")
@click.option("--dry-run", is_flag=True, help="Print the plan; touch nothing.")
@click.option("--deploy", "deploy_ref", default=DEFAULT_DEPLOY, show_default=True,
              help="The pyinfra deploy of the last step, as module:function (e.g. "
                   "deploys.full:base_node: managed and watched, serving nothing yet).")
@pass_context
def provision(ctx: Context, nodes: tuple[str, ...], region: str | None, everything: bool,
              parallel: int, wipe: bool, dry_run: bool, deploy_ref: str) -> None:
    """Bare box → rescue → encrypted install → reboot → unlock → deploy (resumable).

    Several nodes (NODE..., --region or --all) run at once and end with a table; exit 0 if
    all succeeded, 30 if some failed, 31 if none succeeded. One NODE exits with its own
    error's code.
    """
    names = select_nodes(ctx.fleet, nodes, region, everything)
    _check_deploy_ref(deploy_ref)
    single = len(nodes) == 1  # one NODE named: the output and exit codes it always had
    if dry_run:
        plans = FleetRun(ctx.fleet, ctx.store, ctx.state_dir).plan(names, wipe=wipe)
        if single:
            [planned] = plans
            if planned.error is not None:
                raise planned.error
            if ctx.as_json:
                ctx.emit(planned.plan)
            else:
                _print_plan(planned.plan or {})
            return
        _print_plans(ctx, plans)
        error = failure_error("dry run", len(plans),
                              [(outcome.node, None) for outcome in plans if not outcome.ok])
        if error is not None:
            raise error
        return
    with progress_display(names, as_json=ctx.as_json) as display:
        run = FleetRun(ctx.fleet, ctx.store, ctx.state_dir, parallel=parallel, sink=display,
                       deploy_ref=deploy_ref)
        result = run.provision(names, wipe=wipe)
    if single:
        [outcome] = result.outcomes
        if outcome.error is not None:
            if outcome.recovery_key:  # installed, then a later step failed: show it anyway
                if ctx.as_json:
                    ctx.emit({"node": outcome.node, "recovery_key": outcome.recovery_key})
                else:
                    _print_recovery_keys([(outcome.node, outcome.recovery_key)])
            raise outcome.error
        assert outcome.report is not None
        _print_report(ctx, outcome.report)
        return
    _print_summary(ctx, result)
    error = result.error()
    if error is not None:
        raise error


@click.command()
@click.argument("node")
@click.option("--approve", is_flag=True,
              help="Do not unlock here: record an approval, and `clonefleet unlockd` unlocks "
                   "the node's current boot (policy \"approve\", or a node held after a "
                   "reboot loop).")
@click.option("--no-wait", is_flag=True, help="Return once unlocked, without waiting for sshd.")
@click.option("--timeout", type=float, default=None,
              help="Seconds each wait may take (default: the provider's boot timeout, 600 s; "
                   "900 s for dedicated servers; 1200 s for lab VMs under emulation).")
@pass_context
def unlock(ctx: Context, node: str, approve: bool, no_wait: bool, timeout: float) -> None:
    """Unlock a node waiting in its initramfs (pinned Dropbear key, keystore passphrase);
    --approve lets unlockd do it."""
    if approve:
        from clonefleet.unlockd import boots

        name = ctx.fleet.node(node).name
        at = boots.approve(ctx.store, name, by=_operator())
        ctx.emit({"node": name, "approved_at": at},
                 f"{name}: unlock approved; unlockd unlocks its current boot")
        return
    message = make_provisioner(ctx, node).unlock(node, wait_for_sshd=not no_wait,
                                                  timeout=timeout)
    ctx.emit({"node": node, "unlocked": True, "message": message},
             f"{node}: unlocked ({message})")


def _operator() -> str:
    import getpass
    import socket

    return f"{getpass.getuser()}@{socket.gethostname()} (clonefleet unlock --approve)"


DEPLOY_HELP = """Apply a pyinfra deploy to nodes; --diff shows what it would change.

\b
Exit codes:
  0   every node deployed (--diff: nothing would change)
  2   bad option or unknown node
  3   no selected node has a recorded SSH address (provision it first)
  10  a node failed (--diff: a node could not be compared)
  40  --diff: something would change
"""


@click.command(help=DEPLOY_HELP)
@click.argument("nodes", nargs=-1, required=True)
@click.option("--deploy", "deploy_ref", default=DEFAULT_DEPLOY, show_default=True,
              help="pyinfra deploy as module:function.")
@click.option("--diff", "--dry-run", "diff", is_flag=True,
              help="Change nothing: per node, the operations that would change and each "
                   "file's diff (secrets and non-public files hidden).")
@pass_context
def deploy(ctx: Context, nodes: tuple[str, ...], deploy_ref: str, diff: bool) -> None:
    names = select_nodes(ctx.fleet, nodes)
    _check_deploy_ref(deploy_ref)
    if diff:
        _deploy_diff(ctx, names, deploy_ref)
        return
    with progress_display(names, as_json=ctx.as_json) as display:
        results = FleetRun(ctx.fleet, ctx.store, ctx.state_dir, sink=display).deploy(
            names, deploy_ref)
    if ctx.as_json:
        ctx.emit({name: result.__dict__ for name, result in results.items()})
    else:
        rows = []
        for name, result in sorted(results.items()):
            detail = describe_failure(result) if result.failed else \
                "\n".join(f"changed: {op}" for op in result.changed) or "-"
            rows.append((name, status_text("FAILED" if result.failed else "ok"),
                         str(len(result.changed)), str(result.unchanged), detail))
        print_table(["NODE", "RESULT", Column("CHANGED", justify="right"),
                     Column("UNCHANGED", justify="right"), "DETAIL"], rows)
    if any(result.failed for result in results.values()):
        raise DeployError("deploy failed on: " + ", ".join(
            sorted(name for name, result in results.items() if result.failed)))


def _deploy_diff(ctx: Context, names: list[str], deploy_ref: str) -> None:
    from clonefleet.cli.diff_display import print_diff

    results = FleetRun(ctx.fleet, ctx.store, ctx.state_dir).diff(names, deploy_ref)
    if ctx.as_json:
        ctx.emit({name: dataclasses.asdict(result) for name, result in sorted(results.items())})
    else:
        print_diff([results[name] for name in sorted(results)])
    failed = sorted(name for name, result in results.items() if result.failed)
    if failed:
        raise DeployError("could not compare: " + ", ".join(failed))
    if any(result.changes for result in results.values()):
        sys.exit(CHANGES_PENDING)


def register(group: click.Group) -> None:
    group.add_command(provision)
    group.add_command(unlock)
    group.add_command(deploy)
