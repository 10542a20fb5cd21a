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


STATUS_HELP = """Show each node's lifecycle state (and history).

With --live, every node is also probed now, at once (each probe bounded by --timeout), and
LIVE says what it is doing: sshd (its sshd answers with the pinned key), initramfs (Dropbear
answers with the pinned key: waiting for unlock), off (the provider says it is powered off),
unreachable (no SSH answer and the provider says it is on, or cannot be asked),
host-key-mismatch (a port answers with another key: nothing is sent to it; check the node
out of band, then `clonefleet keys repin NODE`), unpinned (a port answers but no key is
pinned there yet: not installed), unprovisioned (no address recorded).
Probes only exchange SSH keys: they never log in.

\b
Exit codes:
  0   shown (whatever the nodes are doing)
  2   unknown node or bad option
"""


@click.command(help=STATUS_HELP)
@click.argument("nodes", nargs=-1)
@click.option("--history", is_flag=True, help="Show every recorded transition.")
@click.option("--live", is_flag=True, help="Probe every node now and show what it is doing.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="With --live: seconds each probe may take.")
@click.option("--parallel", type=click.IntRange(min=1), default=16, show_default=True,
              help="With --live: nodes probed at once.")
@pass_context
def status(ctx: Context, nodes: tuple[str, ...], history: bool, live: bool, timeout: float,
           parallel: int) -> None:
    fleet = ctx.fleet
    names = [fleet.node(name).name for name in nodes] or sorted(fleet.nodes)
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
    if live:
        from clonefleet.unlockd.boots import current_boot

        for row, found in zip(rows, _probe(ctx, names, timeout, parallel), strict=True):
            row["live"] = found.as_dict()
            # What unlockd recorded of the boot it waits in (held, failed, ...), if anything.
            boot = current_boot(ctx.store, row["node"]) if found.live == "initramfs" else None
            if boot is not None and boot.marker:
                row["live"]["unlockd"] = {"boot": boot.marker, "status": boot.status,
                                          "expected": boot.expected}
                row["live"]["detail"] += f"; unlockd: boot {boot.marker} {boot.status}" + (
                    f" (`clonefleet unlock --approve {row['node']}`)"
                    if boot.status in ("waiting", "held") else "")
    if ctx.as_json:
        ctx.emit(rows)
        return
    from clonefleet.cli.display import print_table, status_text

    table: list[tuple[Any, ...]] = []
    for row in rows:
        cells: tuple[Any, ...] = (row["node"], row["region"], row["provider"],
                                  row["state"] or "not provisioned")
        if live:
            cells += (status_text(row["live"]["live"], good=("sshd",),
                                  bad=("unreachable", "host-key-mismatch")),)
        cells += (_when(row["since"]), row["reason"])
        if live:
            cells += (row["live"]["detail"],)
        table.append(cells)
        # Each transition under its node: from -> to in STATE, when in SINCE, who and why.
        for transition in row.get("history", []):
            pad = ("",) if live else ()
            table.append(("", "", "", f"{transition['from_state'] or '-'} -> "
                                      f"{transition['to_state']}", *pad,
                          _when(transition["at"]),
                          f"by {transition['actor']}  {transition['reason']}", *pad))
    headers = ["NODE", "REGION", "PROVIDER", "STATE", "SINCE", "REASON"]
    if live:
        headers = ["NODE", "REGION", "PROVIDER", "STATE", "LIVE", "SINCE", "REASON", "DETAIL"]
    print_table(headers, table)


def _probe(ctx: Context, names: list[str], timeout: float, parallel: int) -> list[Any]:
    from clonefleet.known_hosts import fleet_known_hosts
    from clonefleet.liveprobe import probe_fleet
    from clonefleet.providers import provider_for

    fleet, state_dir = ctx.fleet, ctx.state_dir

    def provider_status(name: str) -> str:
        node = fleet.node(name)
        return provider_for(fleet, node, state_dir, log=lambda message: None).info(node).status

    return probe_fleet(ctx.store, names, fleet_known_hosts(state_dir), provider_status,
                       timeout=timeout, parallel=parallel)


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "-"


def register(group: click.Group) -> None:
    group.add_command(check)
    group.add_command(status)
