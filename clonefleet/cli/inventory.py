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
    from clonefleet.cli.display import print_table

    table: list[tuple[str, ...]] = []
    for row in rows:
        table.append((row["node"], row["region"], row["provider"],
                      row["state"] or "not provisioned", _when(row["since"]), row["reason"]))
        # Each transition under its node: from -> to in STATE, when in SINCE, who and why.
        for transition in row.get("history", []):
            table.append(("", "", "", f"{transition['from_state'] or '-'} -> "
                                      f"{transition['to_state']}", _when(transition["at"]),
                          f"by {transition['actor']}  {transition['reason']}"))
    print_table(["NODE", "REGION", "PROVIDER", "STATE", "SINCE", "REASON"], table)


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "-"


def register(group: click.Group) -> None:
    group.add_command(check)
    group.add_command(status)
