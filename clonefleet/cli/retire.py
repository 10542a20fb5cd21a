"""`clonefleet retire NODE`: parse, call the core, print."""

from __future__ import annotations

import dataclasses

import click

from clonefleet.cli import Context, pass_context
from clonefleet.errors import ConfigError
from clonefleet.keystore import Keystore
from clonefleet.known_hosts import fleet_known_hosts
from clonefleet.providers import provider_for
from clonefleet.retire import plan_retire, retire


@click.command("retire")
@click.argument("node")
@click.option("--yes", is_flag=True, help="Really delete the server and forget the node.")
@click.option("--dry-run", is_flag=True, help="Say what would happen; touch nothing.")
@pass_context
def retire_command(ctx: Context, node: str, yes: bool, dry_run: bool) -> None:
    """Delete NODE's server and forget its passphrase and facts (needs --yes)."""
    plan = plan_retire(ctx.fleet, ctx.store, node)
    if dry_run or not plan.steps:
        ctx.emit(dataclasses.asdict(plan),
                 f"{node}: {plan.note}" if plan.note else
                 f"{node} ({plan.provider} server {plan.server_id or '(none recorded)'}, now "
                 f"{plan.state or 'not provisioned'}) would be retired: "
                 f"{' → '.join(plan.steps)}")
        return
    if not yes:
        raise ConfigError(f"retire {node} deletes its {plan.provider} server and forgets its "
                          "disk passphrase for good; pass --yes to do it (or --dry-run to see "
                          "the plan)")
    def log(message: str) -> None:
        click.echo(message, err=True)

    provider = provider_for(ctx.fleet, ctx.fleet.node(node), ctx.state_dir, log)
    result = retire(ctx.fleet, ctx.store, provider, Keystore(ctx.state_dir / "keystore"), node,
                    known_hosts=fleet_known_hosts(ctx.state_dir), log=log)
    ctx.emit(dataclasses.asdict(result), f"{node}: retired ({plan.provider} server "
             f"{plan.server_id or '(none recorded)'} deleted; passphrase, facts and host keys "
             "forgotten)")


def register(group: click.Group) -> None:
    group.add_command(retire_command)
