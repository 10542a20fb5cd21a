"""`clonefleet lab ls|destroy|console`: the local qemu lab."""

from __future__ import annotations

import click

from clonefleet.cli import Context, pass_context
from clonefleet.errors import ConfigError
from clonefleet.keystore import Keystore
from clonefleet.providers.lab import LabProvider


@click.group()
def lab() -> None:
    """Manage the local lab's qemu VMs."""


@lab.command("ls")
@pass_context
def list_vms(ctx: Context) -> None:
    """List lab VMs with their state and forwarded ports."""
    servers = LabProvider(ctx.state_dir).list()
    rows = [{"node": s.node, "status": s.status, "ssh": str(s.ssh), "unlock": str(s.unlock),
             "console": s.details.get("console", "")} for s in servers]
    if ctx.as_json:
        ctx.emit(rows)
        return
    if not rows:
        click.echo("no lab VMs")
        return
    click.echo(f"{'NODE':<12}{'STATUS':<8}{'SSH':<22}{'DROPBEAR':<22}CONSOLE")
    for row in rows:
        click.echo(f"{row['node']:<12}{row['status']:<8}{row['ssh']:<22}{row['unlock']:<22}"
                   f"{row['console']}")


@lab.command()
@click.argument("nodes", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Destroy every lab VM of the fleet.")
@pass_context
def destroy(ctx: Context, nodes: tuple[str, ...], everything: bool) -> None:
    """Delete lab VMs (disks included) and forget their install (keys, passphrase)."""
    provider = LabProvider(ctx.state_dir)
    names = [server.node for server in provider.list()] if everything else list(nodes)
    if not names and not everything:
        raise ConfigError("name the lab VMs to destroy, or pass --all")
    keystore = Keystore(ctx.state_dir / "keystore")
    for name in names:
        provider.delete(name)
        ctx.store.delete_facts(name)
        keystore.delete(name)
        record = ctx.store.get(name)
        if record is not None and record.state != "ordered":
            ctx.store.transition(name, "ordered", actor="clonefleet lab destroy",
                                 reason="lab VM destroyed")
    ctx.emit({"destroyed": names}, f"destroyed: {', '.join(names) or 'nothing'}")


@lab.command()
@click.argument("node")
@click.option("--lines", default=40, show_default=True)
@pass_context
def console(ctx: Context, node: str, lines: int) -> None:
    """Show the tail of a lab VM's serial console."""
    provider = LabProvider(ctx.state_dir)
    text = provider.console_tail(ctx.fleet.node(node)).splitlines()[-lines:]
    click.echo("\n".join(text))


def register(group: click.Group) -> None:
    group.add_command(lab)
