"""`clonefleet keys repin NODE`, `keys grant|revoke UNLOCKER`, `keys unlockers`,
`keys unlocker-key FILE`: parse, call `clonefleet.repin` / `clonefleet.unlockers`, print."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from clonefleet.cli import Context, pass_context
from clonefleet.cli.display import print_table
from clonefleet.errors import ConfigError
from clonefleet.keystore import Keystore
from clonefleet.known_hosts import fleet_known_hosts
from clonefleet.liveprobe import DEFAULT_TIMEOUT
from clonefleet.repin import apply_repin, plan_repin


@click.group("keys")
def keys_group() -> None:
    """Host keys, LUKS key slots and unlockers."""


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


GRANT_HELP = """Let the unlocker NAME open every node's passphrase with its own key.

PUBLIC_KEY is the unlocker's ssh-ed25519 public key line (or a .pub file holding it; make the
pair on the unlocker with `clonefleet keys unlocker-key FILE`). Every node's keystore entry is
re-encrypted to the controller's identity plus every granted unlocker, and mirrored into the
state store, where `clonefleet unlockd --state ... --identity FILE` reads it. The unlocker must
also be allowed into Dropbear: nodes provisioned after the grant have its key in their
initramfs authorized_keys (unlock only: no shell).

\b
Exit codes:
  0   granted (every entry re-encrypted)
  2   not an ssh-ed25519 key, or NAME is granted with another key
  6   the controller's keystore identity is missing, or re-encryption stopped (run again)
"""


def _public_key(value: str) -> str:
    path = Path(value).expanduser()
    if not value.startswith("ssh-") and path.is_file():
        return path.read_text().strip()
    return value


def _keystore(ctx: Context) -> Keystore:
    from clonefleet.unlockers import fleet_keystore

    return fleet_keystore(ctx.state_dir, ctx.store)


@keys_group.command("grant", help=GRANT_HELP)
@click.argument("name")
@click.argument("public_key")
@pass_context
def grant_command(ctx: Context, name: str, public_key: str) -> None:
    from clonefleet.unlockd.service import publish_config
    from clonefleet.unlockers import grant

    _check_name(name)
    report = grant(ctx.store, _keystore(ctx), name, _public_key(public_key))
    # What the unlocker reads instead of a fleet file: the policy, regions, alert URLs.
    publish_config(ctx.store, ctx.fleet.unlock,
                   {node: value.region for node, value in ctx.fleet.nodes.items()},
                   ctx.fleet.alert_urls)
    ctx.emit(report.as_dict(), f"unlocker {name}: granted; {len(report.nodes)} passphrase(s) "
                               "re-encrypted to it")


@keys_group.command("revoke")
@click.argument("name")
@pass_context
def revoke_command(ctx: Context, name: str) -> None:
    """Re-encrypt every node's passphrase without unlocker NAME's key, then forget it.

    Passphrases it copied before stay readable to it: rotate them to take those away too.
    Exit code 6 when the re-encryption could not finish (it names what is left; run again).
    """
    from clonefleet.unlockers import revoke

    report = revoke(ctx.store, _keystore(ctx), name)
    ctx.emit(report.as_dict(), f"unlocker {name}: revoked; {len(report.nodes)} passphrase(s) "
                               "re-encrypted without it")


@keys_group.command("unlockers")
@pass_context
def unlockers_command(ctx: Context) -> None:
    """The unlockers granted (and any grant or revoke left unfinished)."""
    from clonefleet.liveprobe import fingerprint
    from clonefleet.unlockers import registered

    found = registered(ctx.store)
    ctx.emit({"unlockers": [unlocker.as_dict() for unlocker in found.values()]})
    if not ctx.as_json:
        print_table(["NAME", "STATUS", "KEY"],
                    [(name, unlocker.status, fingerprint(unlocker.key))
                     for name, unlocker in sorted(found.items())])


@keys_group.command("unlocker-key")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@pass_context
def unlocker_key_command(ctx: Context, path: Path) -> None:
    """Make an unlocker identity: an ed25519 key at PATH (0600) and PATH.pub; prints the
    public line to pass to `clonefleet keys grant` on the controller."""
    from clonefleet.ssh import generate_ed25519

    if path.exists():
        raise ConfigError(f"{path} exists; choose another path (an identity is never "
                          "overwritten)")
    key = generate_ed25519(f"unlocker@{path.stem}")
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key.private_openssh)
    path.with_name(path.name + ".pub").write_text(key.public_line + "\n")
    ctx.emit({"path": str(path), "public_key": key.public_line}, key.public_line)


def _check_name(name: str) -> None:
    from clonefleet.state.model import check_name

    check_name(name, "unlocker")


def register(group: click.Group) -> None:
    # keys rotate, status, recovery, rotate-host-keys
    from clonefleet.cli.keyslots import register_commands

    register_commands(keys_group)
    group.add_command(keys_group)
