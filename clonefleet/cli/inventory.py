"""`clonefleet check` and `clonefleet status`."""

from __future__ import annotations

import os
import time
from typing import Any

import click

from clonefleet.cli import Context, pass_context


@click.command()
@click.option("--skip-credentials", is_flag=True,
              help="Do not check that the providers' credential variables are set.")
@pass_context
def check(ctx: Context, skip_credentials: bool) -> None:
    """Validate the fleet file."""
    from clonefleet.inventory import load_fleet

    fleet = load_fleet(ctx.fleet_path, environ=None if skip_credentials else os.environ)
    ctx.emit(
        {"fleet": fleet.name, "regions": sorted(fleet.regions), "nodes": sorted(fleet.nodes),
         "providers": {name: config.driver for name, config in sorted(fleet.providers.items())}},
        f"{fleet.path}: ok ({len(fleet.regions)} regions, {len(fleet.nodes)} nodes)",
    )


@click.command()
@click.argument("nodes", nargs=-1)
@click.option("--history", is_flag=True, help="Show every recorded transition.")
@pass_context
def status(ctx: Context, nodes: tuple[str, ...], history: bool) -> None:
    """Show each node's lifecycle state (and history)."""
    fleet = ctx.fleet
    names = list(nodes) or sorted(fleet.nodes)
    rows: list[dict[str, Any]] = []
    for name in names:
        node = fleet.node(name)
        record = ctx.store.get(name)
        row: dict[str, Any] = {
            "node": name,
            "region": node.region,
            "provider": node.provider,
            # No transition recorded: nothing was ever ordered or installed for this node.
            "state": record.state if record else None,
            "provisioned": record is not None,
            "since": record.since if record else None,
            "actor": record.actor if record else "",
            "reason": record.reason if record else "",
        }
        if history:
            row["history"] = [t.__dict__ for t in ctx.store.history(name)]
        rows.append(row)
    if ctx.as_json:
        ctx.emit(rows)
        return
    click.echo(f"{'NODE':<14}{'REGION':<8}{'PROVIDER':<15}{'STATE':<17}{'SINCE':<21}REASON")
    for row in rows:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["since"])) \
            if row["since"] else "-"
        click.echo(f"{row['node']:<14}{row['region']:<8}{row['provider']:<15}"
                   f"{row['state'] or 'not provisioned':<17}{since:<21}{row['reason']}")
        for transition in row.get("history", []):
            at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(transition["at"]))
            click.echo(f"    {at}  {transition['from_state'] or '-'} -> "
                       f"{transition['to_state']}  by {transition['actor']}  "
                       f"{transition['reason']}")


def register(group: click.Group) -> None:
    group.add_command(check)
    group.add_command(status)
