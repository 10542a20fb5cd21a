"""`clonefleet power on|off|reset NODE...`: parse, call `clonefleet.power`, print."""

from __future__ import annotations

import time

import click
from rich.table import Column

from clonefleet.cli import Context, pass_context
from clonefleet.cli.display import print_table, status_text
from clonefleet.fleetrun import select_nodes
from clonefleet.power import ACTIONS, check_confirmed, outcome_error, power, provider_factory

POWER_HELP = """Power nodes on, off, or reset them through their provider.

\b
on     start a node that is off, from its disk; a node that is on is left alone
off    cut its power (no shutdown: the disk stays as it is; unlocked volumes close)
reset  hard reset (power cycle); an encrypted node then waits for its unlock

Nothing is recorded in the node's lifecycle state: `clonefleet status --live` shows whether
a node is off, in its initramfs or up. `off` and `reset` of a node that is active in the DNS
map need --yes: drain it first (`clonefleet drain NODE`), so no client is sent to it.

\b
What each provider can do:
  lab            on: start the VM; off: stop it; reset: the VM's reset
  hetzner-cloud  the poweron, poweroff and reset actions (on disables a rescue left enabled)
  hetzner-robot  no power-on call and no power state in the API: on presses the power
                 button (reset type power) of a server clonefleet powered off, or else,
                 when neither sshd nor Dropbear answers, sends the configured reset_type;
                 off needs the power_long reset type
  ovh            no power-on or power-off call: on reboots a powered-off server with the
                 netboot on its disk (a reboot task); off is refused (use the IPMI
                 console); reset is a hard reboot task

\b
Exit codes:
  0   every node did what was asked (or was already on)
  2   bad option or unknown node; off/reset of an active node without --yes
  4   one NODE: the provider refused or failed (9: it timed out)
  30  several nodes: some failed
  31  several nodes: none succeeded
"""


@click.command("power", help=POWER_HELP)
@click.argument("action", type=click.Choice(ACTIONS))
@click.argument("nodes", nargs=-1)
@click.option("--region", help="Every node of this region.")
@click.option("--all", "everything", is_flag=True, help="Every node of the fleet.")
@click.option("--yes", is_flag=True,
              help="Power off or reset even nodes that are active in the DNS map.")
@pass_context
def power_command(ctx: Context, action: str, nodes: tuple[str, ...], region: str | None,
                  everything: bool, yes: bool) -> None:
    assert action in ACTIONS
    chosen = ACTIONS[ACTIONS.index(action)]  # typed as PowerAction
    names = select_nodes(ctx.fleet, nodes, region, everything)
    check_confirmed(ctx.fleet, ctx.store, chosen, names, yes)
    started = time.monotonic()

    def log(message: str) -> None:
        click.echo(f"[{time.monotonic() - started:7.1f}s] {message}", err=True)

    def announce(node: str, action: str) -> None:
        from clonefleet.unlockd.boots import expect_reboot

        expect_reboot(ctx.store, node, by=f"clonefleet power {action}")

    outcomes = power(chosen, names, ctx.fleet, provider_factory(ctx.fleet, ctx.state_dir, log),
                     log=log, announce=announce)
    single = len(nodes) == 1
    if single and outcomes[0].failure is not None:
        raise outcomes[0].failure
    if ctx.as_json:
        ctx.emit({"action": action, "nodes": [outcome.as_dict() for outcome in outcomes],
                  "failed": [outcome.node for outcome in outcomes if not outcome.ok]})
    elif single:
        click.echo(f"{outcomes[0].node}: {outcomes[0].message}")
    else:
        print_table(["NODE", "RESULT", Column("SECONDS", justify="right"), "DETAIL"],
                    [(outcome.node, status_text("ok" if outcome.ok else "FAILED"),
                      f"{outcome.seconds:.1f}", outcome.message or outcome.error)
                     for outcome in outcomes])
    error = outcome_error(chosen, outcomes)
    if error is not None:
        raise error


def register(group: click.Group) -> None:
    group.add_command(power_command)
