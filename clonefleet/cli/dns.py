"""`clonefleet dns show|publish|verify|geoip|health|settle`, `clonefleet drain`, `undrain`.

Exit codes: 0 done; 2 bad input; 20 nothing to check or another DNS error; 21 refused by a
safety rule; 22 recorded but some DNS servers were unreachable; 23 `verify` found a server
disagreeing with the map; 24 a reachable server did not confirm the change in time; 25 a
malformed `dns_endpoint` fact.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import time
from typing import Any

import click

from clonefleet.cli import Context, pass_context
from clonefleet.dnsmap import (
    DnsError,
    DnsMismatch,
    DnsUnreachable,
    DrainRefused,
    DrainResult,
    build_geoip_database,
    build_map,
    drain_node,
    plan_drain,
    plan_undrain,
    publish,
    record_health,
    settle,
    undrain_node,
    verify,
)
from clonefleet.dnsmap.geoip import parse_network
from clonefleet.dnsmap.publish import SERVER_SECONDS
from clonefleet.dnsmap.verify import as_lines


def _actor() -> str:
    """Who to record: CLONEFLEET_ACTOR (set by automation) or the operator's login."""
    explicit = os.environ.get("CLONEFLEET_ACTOR")
    if explicit:
        return explicit
    try:
        return f"{getpass.getuser()} (cli)"
    except OSError:
        return "cli"


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "-"


@click.group()
def dns() -> None:
    """The DNS map: routed names → active nodes, on every node's PowerDNS."""


@dns.command()
@pass_context
def show(ctx: Context) -> None:
    """Show routed names, the nodes behind them, and every node's state and reason."""
    fleet, store = ctx.fleet, ctx.store
    dns_map = build_map(fleet, store)
    servers = {record.node: record for record in store.dns_servers()}
    serial = store.last_dns_serial()
    data: dict[str, Any] = {
        "zone": dns_map.domain,
        "serial": serial,
        "routed": [{"name": entry.name, "ttl": entry.ttl,
                    "nodes": [node.name for node in entry.nodes]} for entry in dns_map.routed],
        "nodes": [dataclasses.asdict(node) | {"dns_server": (
            dataclasses.asdict(servers[node.name]) if node.name in servers else None)}
            for node in dns_map.nodes],
    }
    if ctx.as_json:
        ctx.emit(data)
        return
    from rich.table import Column

    from clonefleet.cli.display import print_table, status_text

    click.echo(f"zone {dns_map.domain}  last published serial {serial or '-'}")
    print_table(["NAME", Column("TTL", justify="right"), "NODES"], [
        (entry.name, str(entry.ttl),
         ", ".join(node.name for node in entry.nodes) or "(none active: empty answer)")
        for entry in dns_map.routed])
    click.echo("")
    rows = []
    for node in dns_map.nodes:
        server = servers.get(node.name)
        if server is None:
            pushed = "never pushed"
        elif server.ok:
            pushed = f"ok {server.serial}"
        else:
            pushed = "UNREACHABLE"
        why = f"{node.actor}: {node.reason}" if node.actor else ""
        rows.append((node.name, node.region, node.state, _when(node.since),
                     status_text(pushed, good=(f"ok {server.serial}" if server else "",)),
                     why))
    print_table(["NODE", "REGION", "STATE", "SINCE", "DNS SERVER", "BY / REASON"], rows)


@dns.command(name="publish")
@click.option("--dry-run", is_flag=True, help="Show the records; change nothing.")
@click.option("--timeout", default=SERVER_SECONDS, show_default=True,
              help="Seconds each server has to take the zone; a silent one is then named.")
@pass_context
def publish_command(ctx: Context, dry_run: bool, timeout: float) -> None:
    """Push the map to every node's PowerDNS with a new serial."""
    result = publish(ctx.fleet, ctx.store, actor=_actor(), dry_run=dry_run, timeout=timeout)
    if dry_run:
        lines = [f"would publish zone {result.zone}:"]
        for rrset in result.rrsets:
            for record in rrset["records"]:
                lines.append(f"  {rrset['name']} {rrset['ttl']} {rrset['type']} "
                             f"{record['content']}")
        ctx.emit(dataclasses.asdict(result), "\n".join(lines))
        return
    lines = [f"published zone {result.zone} serial {result.serial} to "
             f"{len(result.pushed)} server(s)"]
    lines += [f"  settled to drained: {node}" for node in result.settled]
    lines += [f"  UNREACHABLE {node}: {error}" for node, error in result.unreachable.items()]
    lines += [f"  no dns_endpoint fact: {node}" for node in result.unconfigured]
    ctx.emit(dataclasses.asdict(result), "\n".join(lines))
    if result.unreachable:
        raise DnsUnreachable(f"{len(result.unreachable)} DNS server(s) unreachable: "
                             f"{', '.join(result.unreachable)}; the next publish catches them up")


@dns.command(name="verify")
@click.option("--timeout", default=SERVER_SECONDS, show_default=True,
              help="Seconds per API call and per DNS query.")
@pass_context
def verify_command(ctx: Context, timeout: float) -> None:
    """Compare every server's zone (API) and answers (DNS, with ECS) with the map; exit 23 on
    any difference, one line each."""
    result = verify(ctx.fleet, ctx.store, timeout=timeout)
    lines = [f"checked {len(result.checked)} server(s) for zone {result.zone} "
             f"(serial {result.serial or '-'})"]
    lines += [f"  {line}" for line in as_lines(result)]
    lines += [f"  UNREACHABLE {node}: {error}" for node, error in result.unreachable.items()]
    lines += [f"  not checked (no dns_endpoint fact): {node}" for node in result.unconfigured]
    ctx.emit(dataclasses.asdict(result) | {"ok": result.ok}, "\n".join(lines))
    if not result.checked and not result.unreachable:
        raise DnsError("no node has a dns_endpoint fact, so no DNS server was checked; "
                       "deploy PowerDNS on the nodes first")
    if result.disagreements:
        servers = sorted({item.server for item in result.disagreements})
        raise DnsMismatch(f"{len(result.disagreements)} answer(s) disagree with the map on "
                          f"{', '.join(servers)}; run `clonefleet dns publish`")
    if result.unreachable:
        raise DnsUnreachable(f"{len(result.unreachable)} DNS server(s) unreachable: "
                             f"{', '.join(result.unreachable)}")


@dns.command(name="geoip")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--network", "networks", multiple=True, metavar="CIDR=LAT,LON",
              help="Also locate a client network (repeatable).")
@pass_context
def geoip_command(ctx: Context, path: str, networks: tuple[str, ...]) -> None:
    """Write the MaxMind-format database of node (and client) locations for PowerDNS."""
    extra = dict(parse_network(item) for item in networks)
    written = build_geoip_database(ctx.fleet, path, extra)
    ctx.emit({"path": str(written), "nodes": len(ctx.fleet.nodes), "networks": len(extra)},
             f"wrote {written} ({len(ctx.fleet.nodes)} nodes, {len(extra)} extra networks)")


@dns.command(name="health")
@click.argument("node")
@click.option("--ok/--failed", "ok", required=True, help="The check's outcome.")
@click.option("--detail", default="", help="What was checked or what failed.")
@click.option("--source", default="operator", show_default=True, help="Who or what checked.")
@pass_context
def health_command(ctx: Context, node: str, ok: bool, detail: str, source: str) -> None:
    """Record a health check result (undrain refuses a node whose last check failed)."""
    ctx.fleet.node(node)
    record_health(ctx.store, node, ok, source=source, detail=detail)
    ctx.emit({"node": node, "ok": ok, "source": source, "detail": detail},
             f"{node}: health {'ok' if ok else 'FAILED'} recorded")


@dns.command(name="settle")
@pass_context
def settle_command(ctx: Context) -> None:
    """Mark draining nodes whose TTL + grace period is over as drained."""
    promoted = settle(ctx.fleet, ctx.store)
    ctx.emit({"drained": promoted},
             "\n".join(f"{node}: drained" for node in promoted) or "nothing to settle")


def _result_text(verb: str, result: DrainResult) -> str:
    lines = [f"{result.node}: {result.state}"
             + ("" if result.changed else f" (already; {verb} republished only)")
             + f", serial {result.serial}, confirmed by {len(result.confirmed)} server(s) "
               f"in {result.seconds:.2f} s"
             + (f" (returned after {result.elapsed:.2f} s: unreachable servers had until "
                "their deadline)" if result.unreachable else "")]
    if result.clients_gone_at:
        lines.append(f"  clients gone (TTL + grace) at {_when(result.clients_gone_at)}; "
                     "then it settles to drained")
    lines += [f"  UNREACHABLE {server}: {result.errors.get(server, '')}"
              for server in result.unreachable]
    if not result.confirmed and not result.unreachable:
        lines.append("  no node has a dns_endpoint fact: the state changed, no server was "
                     "pushed to")
    return "\n".join(lines)


def _finish(ctx: Context, verb: str, result: DrainResult) -> None:
    ctx.emit(dataclasses.asdict(result), _result_text(verb, result))
    if result.unreachable:
        raise DnsUnreachable(f"{verb} of {result.node!r} recorded, but DNS server(s) "
                             f"{', '.join(result.unreachable)} unreachable; the next "
                             "`clonefleet dns publish` catches them up")


@click.command()
@click.argument("node")
@click.option("--reason", default="", help="Why (required; recorded in the history).")
@click.option("--force", is_flag=True, help="Drain even below the region's or fleet's minimum.")
@click.option("--dry-run", is_flag=True, help="Check the safety rules only.")
@click.option("--timeout", default=60.0, show_default=True,
              help="Seconds to wait for every DNS server to stop serving the node.")
@click.option("--server-timeout", default=SERVER_SECONDS, show_default=True,
              help="Seconds a server has to answer each call before it is named unreachable.")
@pass_context
def drain(ctx: Context, node: str, reason: str, force: bool, dry_run: bool,
          timeout: float, server_timeout: float) -> None:
    """Take NODE out of every DNS answer and wait until every server confirms."""
    if dry_run:
        plan = plan_drain(ctx.fleet, ctx.store, node, reason=reason, force=force)
        if plan.refusals:
            raise DrainRefused(f"drain of {node!r} refused: {'; '.join(plan.refusals)}")
        ctx.emit(dataclasses.asdict(plan),
                 f"would drain {node} ({plan.from_state}); {plan.active_after} active node(s) "
                 f"would remain, {plan.region_active_after} in its region")
        return
    result = drain_node(ctx.fleet, ctx.store, node, reason=reason, actor=_actor(), force=force,
                        timeout=timeout, server_timeout=server_timeout)
    _finish(ctx, "drain", result)


@click.command()
@click.argument("node")
@click.option("--reason", default="", help="Why (recorded in the history).")
@click.option("--force", is_flag=True, help="Undrain even after a failed health check.")
@click.option("--dry-run", is_flag=True, help="Check the safety rules only.")
@click.option("--timeout", default=60.0, show_default=True,
              help="Seconds to wait for every DNS server to serve the node again.")
@click.option("--server-timeout", default=SERVER_SECONDS, show_default=True,
              help="Seconds a server has to answer each call before it is named unreachable.")
@pass_context
def undrain(ctx: Context, node: str, reason: str, force: bool, dry_run: bool,
            timeout: float, server_timeout: float) -> None:
    """Put NODE back into DNS answers and wait until every server confirms."""
    if dry_run:
        state, refusals = plan_undrain(ctx.fleet, ctx.store, node, force=force)
        if refusals:
            raise DrainRefused(f"undrain of {node!r} refused: {'; '.join(refusals)}")
        ctx.emit({"node": node, "from_state": state, "refusals": []},
                 f"would undrain {node} ({state})")
        return
    result = undrain_node(ctx.fleet, ctx.store, node, actor=_actor(), reason=reason,
                          force=force, timeout=timeout, server_timeout=server_timeout)
    _finish(ctx, "undrain", result)


def register(group: click.Group) -> None:
    group.add_command(dns)
    group.add_command(drain)
    group.add_command(undrain)
