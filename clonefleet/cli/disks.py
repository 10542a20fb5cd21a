"""`clonefleet disks`: every node's disks in one table, worst first.

Exit codes: 0 every provisioned node answered (whatever its disks say; never-provisioned nodes
are listed as `not-provisioned` rows); 1 one or more nodes could not be asked (they are listed
as `unreachable` rows, and the error line names them).
"""

from __future__ import annotations

import click

from clonefleet.cli import Context, pass_context
from clonefleet.errors import ClonefleetError


@click.command()
@click.argument("nodes", nargs=-1)
@click.option("--parallel", default=8, show_default=True, help="Nodes asked at once.")
@pass_context
def disks(ctx: Context, nodes: tuple[str, ...], parallel: int) -> None:
    """Show the disk health of every node (or NODES), gathered over SSH from smartwatch."""
    from clonefleet.disks import gather, rows
    from clonefleet.ssh import ensure_operator_key

    key = ensure_operator_key(ctx.fleet.ssh_key, ctx.state_dir)
    reports = gather(ctx.fleet, ctx.store, key.path, list(nodes) or None, parallel=parallel)
    table = rows(reports)
    if ctx.as_json:
        ctx.emit(table)
    else:
        from rich.table import Column

        from clonefleet.cli.display import print_table, status_text

        cells = []
        for row in table:
            temperature = "-" if row["temperature"] is None else f"{row['temperature']}C"
            hours = "-" if row["power_on_hours"] is None else str(row["power_on_hours"])
            cells.append((status_text(row["status"]), row["node"], row["device"],
                          str(row["model"]), row["serial"], temperature, hours,
                          "\n".join(row["findings"])))
        print_table(["STATUS", "NODE", "DEVICE", "MODEL", "SERIAL",
                     Column("TEMP", justify="right"), Column("HOURS", justify="right"),
                     "FINDINGS"], cells)
    missing = [report.node for report in reports if report.status == "unreachable"]
    if missing:
        raise ClonefleetError(f"{len(missing)} node(s) could not be asked: {', '.join(missing)}")


def register(group: click.Group) -> None:
    group.add_command(disks)
