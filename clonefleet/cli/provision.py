"""`clonefleet provision`, `unlock`, `deploy`: parse, call the core, print."""

from __future__ import annotations

import time

import click

from clonefleet.cli import Context, pass_context
from clonefleet.deploy import describe_failure, run_deploy
from clonefleet.errors import ConfigError, DeployError
from clonefleet.keystore import Keystore
from clonefleet.providers import provider_for
from clonefleet.provision import Provisioner, ProvisionReport


def make_provisioner(ctx: Context, node_name: str, quiet: bool = False) -> Provisioner:
    node = ctx.fleet.node(node_name)
    started = time.monotonic()

    def log(message: str) -> None:
        if not quiet:
            click.echo(f"[{time.monotonic() - started:7.1f}s] {message}", err=ctx.as_json)

    last_shown = {"percent": -10}

    def progress(what: str, done: int, total: int) -> None:
        percent = int(done * 100 / total) if total else 100
        if percent >= last_shown["percent"] + 10 or done == total:
            last_shown["percent"] = percent
            log(f"{what}: {percent}% of {total / 1e6:.0f} MB")

    provider = provider_for(ctx.fleet, node, ctx.state_dir, log)
    return Provisioner(ctx.fleet, ctx.store, ctx.state_dir, provider,
                       Keystore(ctx.state_dir / "keystore"), log=log, progress=progress)


def _print_report(ctx: Context, report: ProvisionReport) -> None:
    data = {"node": report.node, "state": report.final_state,
            "steps": [{"step": step.strip(), "seconds": round(seconds, 1),
                       "substep": step.startswith("  ")} for step, seconds in report.steps],
            "skipped": report.skipped, "deploy_changes": report.deploy_changes,
            "total_seconds": round(sum(s for n, s in report.steps if not n.startswith("  ")),
                                   1)}
    if ctx.as_json:
        ctx.emit(data)
        return
    if report.skipped:
        click.echo(f"{report.node}: nothing to do ({', '.join(report.skipped)}); state "
                   f"{report.final_state}")
        return
    click.echo(f"\n{report.node}: {report.final_state}. Step timings:")
    for step, seconds in report.steps:
        click.echo(f"  {step:<22}{seconds:8.1f} s")
    click.echo(f"  {'total':<22}{data['total_seconds']:8.1f} s")


@click.command()
@click.argument("node")
@click.option("--wipe", is_flag=True,
              help="Reinstall even if the node was installed before (erases its disks).")
@click.option("--dry-run", is_flag=True, help="Print the plan; touch nothing.")
@pass_context
def provision(ctx: Context, node: str, wipe: bool, dry_run: bool) -> None:
    """Bare box → rescue → encrypted install → reboot → unlock → deploy (resumable)."""
    provisioner = make_provisioner(ctx, node, quiet=dry_run)
    if dry_run:
        plan = provisioner.plan(node, wipe=wipe)
        if ctx.as_json:
            ctx.emit(plan)
            return
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
        return
    _print_report(ctx, provisioner.provision(node, wipe=wipe))


@click.command()
@click.argument("node")
@click.option("--no-wait", is_flag=True, help="Return once unlocked, without waiting for sshd.")
@click.option("--timeout", type=float, default=None,
              help="Seconds each wait may take (default: the provider's boot timeout, 600 s; "
                   "900 s for dedicated servers; 1200 s for lab VMs under emulation).")
@pass_context
def unlock(ctx: Context, node: str, no_wait: bool, timeout: float) -> None:
    """Unlock a node waiting in its initramfs (pinned Dropbear key, keystore passphrase)."""
    message = make_provisioner(ctx, node).unlock(node, wait_for_sshd=not no_wait,
                                                  timeout=timeout)
    ctx.emit({"node": node, "unlocked": True, "message": message},
             f"{node}: unlocked ({message})")


@click.command()
@click.argument("nodes", nargs=-1, required=True)
@click.option("--deploy", "deploy_ref", default="deploys.full:node", show_default=True,
              help="pyinfra deploy as module:function.")
@pass_context
def deploy(ctx: Context, nodes: tuple[str, ...], deploy_ref: str) -> None:
    """Apply a pyinfra deploy to nodes; exits 1 if any node failed."""
    for name in nodes:
        ctx.fleet.node(name)
    if ":" not in deploy_ref:
        raise ConfigError(f"--deploy {deploy_ref!r}: expected module:function, "
                          "e.g. deploys.full:node or deploys.base:base")
    results = run_deploy(ctx.fleet.path, list(nodes), deploy_ref)
    if ctx.as_json:
        ctx.emit({name: result.__dict__ for name, result in results.items()})
    else:
        for name, result in sorted(results.items()):
            status = "FAILED" if result.failed else "ok"
            click.echo(f"{name}: {status}, {len(result.changed)} changed, "
                       f"{result.unchanged} unchanged"
                       + (f"; {describe_failure(result)}" if result.failed else ""))
            for op in result.changed:
                click.echo(f"    changed: {op}")
    if any(result.failed for result in results.values()):
        raise DeployError("deploy failed on: " + ", ".join(
            sorted(name for name, result in results.items() if result.failed)))


def register(group: click.Group) -> None:
    group.add_command(provision)
    group.add_command(unlock)
    group.add_command(deploy)
