"""`clonefleet keys repin NODE`: parse, call `clonefleet.repin`, print."""

from __future__ import annotations

import sys

import click

from clonefleet.cli import Context, pass_context
from clonefleet.cli.display import print_table
from clonefleet.errors import ConfigError
from clonefleet.known_hosts import fleet_known_hosts
from clonefleet.liveprobe import DEFAULT_TIMEOUT
from clonefleet.repin import apply_repin, plan_repin


@click.group("keys")
def keys_group() -> None:
    """Pinned host keys and LUKS key slots (keys repin|rotate|status|recovery)."""


REPIN_HELP = """Pin the host keys NODE presents now, after a host-key mismatch.

Fetches the keys its sshd and Dropbear present (whichever answers; nothing but the key
exchange is sent), prints their fingerprints next to the pinned ones, and replaces the pins
only with --yes or after a confirmation on a terminal. Check the new fingerprints on the
node's own console first (out of band: `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`;
for Dropbear, `dropbearkey -y -f /etc/dropbear/initramfs/dropbear_ed25519_host_key`): a
changed key may be an impostor.

\b
Exit codes:
  0   re-pinned, or the node presents the pinned keys already
  2   unknown node, or changed keys not confirmed (pass --yes)
  3   no address recorded for NODE (provision it first)
  11  neither sshd nor Dropbear answers
"""


@keys_group.command("repin", help=REPIN_HELP)
@click.argument("node")
@click.option("--yes", is_flag=True, help="Replace the pins without asking.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=DEFAULT_TIMEOUT,
              show_default=True, help="Seconds to wait for each SSH server's key.")
@pass_context
def repin(ctx: Context, node: str, yes: bool, timeout: float) -> None:
    name = ctx.fleet.node(node).name
    known_hosts = fleet_known_hosts(ctx.state_dir)
    plan = plan_repin(ctx.store, name, known_hosts, timeout=timeout)
    data = plan.as_dict()
    if not ctx.as_json:
        print_table(["ROLE", "ADDRESS", "PINNED", "PRESENTED NOW", "CHANGE"],
                    [(key["role"], f"{key['host']}:{key['port']}", key["pinned"] or "-",
                      key["presented"] or "(no answer)",
                      "CHANGED" if key["changed"] else "-") for key in data["keys"]])
    if not plan.changes:
        ctx.emit({**data, "repinned": False},
                 f"{name}: presents the pinned keys; nothing to re-pin")
        return
    if not yes:
        if ctx.as_json or not _on_terminal():
            raise ConfigError(f"{name}: {len(plan.changes)} key(s) changed; check them on the "
                              "node's console, then pass --yes to pin them")
        if not click.confirm(f"Pin the presented key(s) for {name}?", default=False):
            raise ConfigError(f"{name}: not re-pinned (declined); the old pins stay")
    apply_repin(ctx.store, known_hosts, plan)
    roles = ", ".join(key.role for key in plan.changes)
    ctx.emit({**data, "repinned": True}, f"{name}: re-pinned {roles}")


def _on_terminal() -> bool:
    return sys.stdin.isatty()


def register(group: click.Group) -> None:
    from clonefleet.cli.keyslots import register_commands  # keys rotate|status|recovery

    register_commands(keys_group)
    group.add_command(keys_group)
