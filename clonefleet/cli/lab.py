"""`clonefleet lab ls|destroy|console|api`: the local qemu lab and the provider API fakes."""

from __future__ import annotations

import json

import click

from clonefleet.cli import Context, pass_context
from clonefleet.cli.display import print_table
from clonefleet.errors import ConfigError
from clonefleet.lab.destroy import destroy_lab_vms
from clonefleet.providers.lab import LabProvider


@click.group()
def lab() -> None:
    """Manage the local lab's qemu VMs and provider API fakes."""


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
    print_table(["NODE", "STATUS", "SSH", "DROPBEAR", "CONSOLE"],
                [(row["node"], row["status"], row["ssh"], row["unlock"], row["console"])
                 for row in rows])


@lab.command()
@click.argument("nodes", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Destroy every lab VM of the fleet.")
@pass_context
def destroy(ctx: Context, nodes: tuple[str, ...], everything: bool) -> None:
    """Delete lab VMs (disks included) and forget their install (keys, passphrase)."""
    if not nodes and not everything:
        raise ConfigError("name the lab VMs to destroy, or pass --all")
    # Names as given: a VM whose node left the fleet file can still be destroyed.
    names = destroy_lab_vms(ctx.store, ctx.state_dir, None if everything else list(nodes))
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


@lab.command("api")
@click.argument("provider")
@click.option("--port", type=click.IntRange(1, 65535),
              help="Listen here instead of the port of the table's api_url.")
@click.option("--record", is_flag=True,
              help="Print power actions instead of booting lab VMs (no VMs at all).")
@click.option("--delay", type=click.FloatRange(min=0.0), metavar="SECONDS",
              help="How long a simulated action (hetzner-cloud, 2), task status (ovh, 2) or "
                   "reboot (hetzner-robot, 5) takes.")
@click.option("--token", help="hetzner-cloud: the API token to accept.")
@click.option("--user", help="hetzner-robot: the web service user to accept.")
@click.option("--password", help="hetzner-robot: its password.")
@click.option("--application-key", help="ovh: the application key to accept.")
@click.option("--application-secret", help="ovh: its application secret.")
@click.option("--consumer-key", help="ovh: the consumer key to accept.")
@pass_context
def api(ctx: Context, provider: str, port: int | None, record: bool, delay: float | None,
        token: str | None, user: str | None, password: str | None,
        application_key: str | None, application_secret: str | None,
        consumer_key: str | None) -> None:
    """Serve a local fake of PROVIDER's API (a [providers.PROVIDER] table of the fleet) on the
    loopback port of its api_url, with the fleet's servers, until Ctrl-C or SIGTERM.

    Prints the URL and the `export` lines of the lab credentials it accepts (with --json:
    one JSON object on one line: url, provider, driver, env, servers). Power-ons boot the
    nodes' lab VMs, unless --record.
    """
    from clonefleet.fakes import serve

    fleet = ctx.fleet
    # With --json, stdout holds the one JSON object: the machine room talks on stderr.
    out = (lambda line: click.echo(line, err=True)) if ctx.as_json else click.echo
    machines = serve.machines_for(fleet, provider, record=record, out=out)
    flags = {"token": token, "user": user, "password": password,
             "application_key": application_key, "application_secret": application_secret,
             "consumer_key": consumer_key}
    given = {key: value for key, value in flags.items() if value is not None}
    served = serve.build(fleet, provider, machines, port=port, delay=delay, credentials=given,
                         recording=record)

    def announce() -> None:
        if ctx.as_json:
            click.echo(json.dumps(served.summary(), sort_keys=True))
            if served.endpoint.note:
                click.echo(served.endpoint.note, err=True)
            return
        how = "power actions are printed, no lab VMs" if record else \
            "power-ons boot the nodes' lab VMs"
        click.echo(f"{served.title} API fake for [providers.{provider}] at {served.url} "
                   f"(fleet {fleet.name}; {how})")
        if served.endpoint.note:
            click.echo(served.endpoint.note)
        for line in served.exports():
            click.echo(line)
        if served.seeds:
            click.echo("servers:")
            print_table(["SERVER", "NAME", "IP", "NODE"],
                        [(str(seed.server), seed.name, seed.ip, seed.node)
                         for seed in served.seeds], indent=2)
        elif served.endpoint.driver == "hetzner-cloud":
            click.echo("servers: none yet; the driver creates them (a server named after a "
                       "node of the fleet runs on that node's lab VM)")
        else:
            click.echo(f"servers: none (no node has provider = \"{provider}\")")
        click.echo("stop with Ctrl-C or SIGTERM")

    serve.serve(served, announce, err=lambda line: click.echo(line, err=True))


def register(group: click.Group) -> None:
    group.add_command(lab)
