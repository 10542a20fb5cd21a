"""`clonefleet keys rotate|status|recovery`: the nodes' LUKS key slots. Parse, call
`clonefleet.keyslots`, print."""

from __future__ import annotations

import click

from clonefleet.cli import Context, pass_context
from clonefleet.cli.display import print_table
from clonefleet.errors import one_line

ROTATE_HELP = """Give NODE's disk a new escrowed unlock passphrase.

Over the node's sshd (pinned host key): adds a new passphrase to a free LUKS key slot,
proves it opens the volume, stores it in the keystore, then removes the old passphrase's
slot. The recovery key's slot is never touched. Stopped half-way (a crash, a lost
connection), it is finished by running it again: the keystore's passphrase opens the
volume at every point.

\b
Exit codes:
  0   rotated (or, with --dry-run, the plan printed)
  2   unknown node
  3   nothing recorded for NODE (provision it first)
  6   the keystore cannot be read, or its passphrase opens no slot
  11  the node's sshd does not answer (it must be booted and unlocked)
  12  a cryptsetup command failed on the node
"""


@click.command("rotate", help=ROTATE_HELP)
@click.argument("node")
@click.option("--dry-run", is_flag=True, help="Print what would be done; change nothing.")
@pass_context
def rotate(ctx: Context, node: str, dry_run: bool) -> None:
    from clonefleet import keyslots
    from clonefleet.keystore import Keystore
    from clonefleet.ssh import ensure_operator_key

    name = ctx.fleet.node(node).name
    key = ensure_operator_key(ctx.fleet.ssh_key, ctx.state_dir)
    volume = keyslots.node_volume(ctx.store, ctx.state_dir, name, key.path)
    try:
        result = keyslots.rotate(volume, ctx.store, Keystore(ctx.state_dir / "keystore"),
                                 name, dry_run=dry_run,
                                 log=lambda line: click.echo(line, err=ctx.as_json))
    finally:
        volume.shell.close()
    if dry_run:
        text = f"{name}: would " + "; ".join(result.actions)
    else:
        text = (f"{name}: rotated: the passphrase in slot {result.new_slot} replaces slot "
                f"{result.old_slot}" + (" (finished an interrupted rotation)"
                                        if result.resumed else ""))
    ctx.emit(result.as_dict(), text)


RECOVERY_HELP = """Replace NODE's offline recovery key (--new).

For a key that was lost, or never shown (a provision that stopped after the install):
adds a fresh recovery key to a free slot over the node's sshd, proves it, removes the old
recovery slot, and prints the new key once. Store it offline.
"""


@click.command("recovery", help=RECOVERY_HELP)
@click.argument("node")
@click.option("--new", "new", is_flag=True, required=True,
              help="Create a new recovery key in place of the old one.")
@click.option("--dry-run", is_flag=True, help="Print what would be done; change nothing.")
@pass_context
def recovery(ctx: Context, node: str, new: bool, dry_run: bool) -> None:
    from clonefleet import keyslots
    from clonefleet.keystore import Keystore
    from clonefleet.ssh import ensure_operator_key

    name = ctx.fleet.node(node).name
    key = ensure_operator_key(ctx.fleet.ssh_key, ctx.state_dir)
    volume = keyslots.node_volume(ctx.store, ctx.state_dir, name, key.path)
    try:
        result = keyslots.replace_recovery(
            volume, ctx.store, Keystore(ctx.state_dir / "keystore"), name, dry_run=dry_run,
            log=lambda line: click.echo(line, err=ctx.as_json))
    finally:
        volume.shell.close()
    if dry_run:
        ctx.emit(result.as_dict(), f"{name}: would " + "; ".join(result.actions))
        return
    ctx.emit(result.as_dict(),
             f"{name}: LUKS RECOVERY KEY in slot {result.new_slot} (shown only now; clonefleet "
             f"does not keep it):\n\n    {result.recovery_key}\n\n"
             "Store it offline, away from the controller; the old recovery key no longer "
             "opens the disk.")


@click.command("status")
@click.argument("nodes", nargs=-1)
@click.option("--live", is_flag=True,
              help="Also read the slots in use from the node (cryptsetup luksDump over sshd).")
@pass_context
def status(ctx: Context, nodes: tuple[str, ...], live: bool) -> None:
    """Show each node's LUKS key slots, last passphrase rotation and recovery slot."""
    from clonefleet import hostkey_rotation, keyslots
    from clonefleet.errors import ClonefleetError
    from clonefleet.ssh import ensure_operator_key

    names = [ctx.fleet.node(node).name for node in nodes] or \
        list(ctx.fleet.nodes)
    key_path = ensure_operator_key(ctx.fleet.ssh_key, ctx.state_dir).path if live else None
    results = []
    for name in names:
        result = keyslots.slot_status(ctx.store, name)
        if key_path is not None:
            try:
                volume = keyslots.node_volume(ctx.store, ctx.state_dir, name, key_path)
                try:
                    result.live_slots = volume.slots()
                finally:
                    volume.shell.close()
            except ClonefleetError as error:
                result.live_error = one_line(error)
        results.append(result)
    host_keys = {name: hostkey_rotation.host_key_status(ctx.store, name) for name in names}
    if ctx.as_json:
        ctx.emit({"nodes": [{**result.as_dict(), **host_keys[result.node]}
                            for result in results]})
        return
    rows = []
    for result in results:
        recorded = ", ".join(f"{role} {slot}" for role, slot in sorted(result.slots.items(),
                                                                        key=lambda i: i[1]))
        row = [result.node, recorded or "-", "yes" if result.has_recovery else "NO",
               result.rotated_at or "-",
               "interrupted: run it again" if result.rotation_pending else "-",
               _host_keys_text(host_keys[result.node])]
        if live:
            row.append(result.live_error or (
                " ".join(str(slot) for slot in result.live_slots or [])
                + (f" (unknown: {' '.join(map(str, result.unknown_slots))})"
                   if result.unknown_slots else "")))
        rows.append(row)
    print_table(["NODE", "SLOTS", "RECOVERY", "PASSPHRASE SET", "ROTATION", "HOST KEYS SET"]
                + (["ON THE NODE"] if live else []), rows)


def _host_keys_text(status: dict[str, object]) -> str:
    if status["host_key_rotation_pending"]:
        return "interrupted: keys rotate-host-keys again"
    return str(status["host_keys_rotated_at"] or "at install")


def register_commands(group: click.Group) -> None:
    from clonefleet.cli.hostkeys import rotate_host_keys

    for command in (rotate, recovery, status, rotate_host_keys):
        group.add_command(command)
