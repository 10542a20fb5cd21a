"""`clonefleet keys rotate-host-keys NODE`: new sshd and Dropbear host keys, pins moved with
them. Parse, call `clonefleet.hostkey_rotation`, print."""

from __future__ import annotations

import click

from clonefleet.cli import Context, pass_context

ROTATE_HOST_KEYS_HELP = """Give NODE new SSH host keys (sshd's and Dropbear's) and move the pins.

Over the node's sshd (pinned host key): makes each new ed25519 key on the node (the private
key never leaves it), records it as pending, puts it in place, then pins it in one step.
sshd is reloaded (open sessions stay) and pinned once it presents the new key; Dropbear's
key goes into a rebuilt initramfs (update-initramfs, a minute or more) and is pinned at
once: the node's next boot presents it. Stopped half-way, it is finished by running it
again: a pending key the node already presents (sshd reloaded, or a reboot into the new
initramfs) is pinned, since this controller made it; any other key is a mismatch.

\b
Exit codes:
  0   rotated (or, with --dry-run, the plan printed)
  2   unknown node
  3   no pinned keys recorded for NODE (provision it first)
  8   a port presents a key that is neither pinned nor pending (check, then keys repin)
  11  the node's sshd does not answer (it must be booted and unlocked)
  12  a command failed on the node (the old keys stay pinned where they are in use)
"""


@click.command("rotate-host-keys", help=ROTATE_HOST_KEYS_HELP)
@click.argument("node")
@click.option("--dry-run", is_flag=True, help="Print what would be done; change nothing.")
@pass_context
def rotate_host_keys(ctx: Context, node: str, dry_run: bool) -> None:
    from clonefleet import hostkey_rotation, nodefacts
    from clonefleet.known_hosts import fleet_known_hosts
    from clonefleet.liveprobe import fingerprint
    from clonefleet.ssh import RemoteShell, ensure_operator_key

    name = ctx.fleet.node(node).name
    key = ensure_operator_key(ctx.fleet.ssh_key, ctx.state_dir)
    known_hosts = fleet_known_hosts(ctx.state_dir)

    def connect() -> RemoteShell:  # the pins as they are now: each rotated one moves
        return nodefacts.sshd_shell(nodefacts.load_pinned(ctx.store, name, known_hosts),
                                    known_hosts, key.path)

    result = hostkey_rotation.rotate_host_keys(
        ctx.store, known_hosts, name, connect, dry_run=dry_run,
        log=lambda line: click.echo(line, err=ctx.as_json))
    if dry_run:
        text = f"{name}: would " + "; ".join(result.actions)
    else:
        text = f"{name}: " + "; ".join(
            f"{role.role} {fingerprint(role.old)} → "
            f"{fingerprint(role.new)}"
            + (" (finished an interrupted rotation)" if role.finished_interrupted else "")
            + (" (the next boot presents it)" if role.role == nodefacts.DROPBEAR else "")
            for role in result.roles)
    ctx.emit(result.as_dict(), text)
