"""`clonefleet unlockd`: parse, build the instance, run it until SIGTERM or ^C."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import threading
import time
from pathlib import Path

import click

from clonefleet.cli import Context, pass_context
from clonefleet.cli.display import print_table

UNLOCKD_HELP = """Unlock every node that waits in its initramfs, by the fleet's policy.

Probes every node with an address; when its Dropbear answers with the pinned initramfs key
and its sshd does not, decides by the policy ([unlock] in the fleet file: expected reboots at
once; unexpected ones at once, after a delay, or after `clonefleet unlock --approve NODE`),
unlocks it, and confirms that sshd answers with its pinned key. A wrong host key is sent
nothing and raises an alert. Several instances may run against one shared (etcd) store: one
lease per node boot makes exactly one of them unlock it.

\b
On the controller:   clonefleet --fleet FLEET.toml unlockd
As an unlocker:      clonefleet unlockd --state etcd://HOST:PORT/PREFIX --identity KEY
(an unlocker needs nothing but its identity, granted with `clonefleet keys grant`).

\b
Exit codes:
  0   stopped (SIGTERM, ^C), or --once found nothing failing
  2   bad option (e.g. --identity without --state)
  6   the unlocker identity is missing or unreadable
  30  --once: some nodes failed (a passphrase that cannot be opened or was refused, ...)
  31  --once: every node watched failed
"""


def _default_work_dir() -> Path:
    return Path(os.environ.get("STATE_DIRECTORY") or
                Path.home() / ".local" / "state" / "clonefleet-unlockd")


@click.command("unlockd", help=UNLOCKD_HELP)
@click.option("--once", is_flag=True, help="One pass over every node, then exit.")
@click.option("--interval", type=click.FloatRange(min=1, max=3600), default=15.0,
              show_default=True, help="Seconds between passes.")
@click.option("--lease-ttl", type=click.FloatRange(min=2, max=3600), default=90.0,
              show_default=True, help="Seconds a dead instance's claim on a boot lasts.")
@click.option("--confirm-timeout", type=click.FloatRange(min=1, max=7200), default=600.0,
              show_default=True, help="Seconds sshd may take to answer after an unlock.")
@click.option("--probe-timeout", type=click.FloatRange(min=0.1, max=60), default=5.0,
              show_default=True, help="Seconds to wait for each SSH server's key.")
@click.option("--state", "state_url", help="Unlocker mode: the shared store, "
              "etcd://HOST:PORT[,HOST:PORT...]/PREFIX (no fleet file needed).")
@click.option("--identity", type=click.Path(dir_okay=False, path_type=Path),
              help="Unlocker mode: this unlocker's OpenSSH ed25519 private key.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Unlocker mode: where its known_hosts is kept (default: $STATE_DIRECTORY "
                   "or ~/.local/state/clonefleet-unlockd).")
@click.option("--name", "holder", default=None,
              help="This instance's name in leases and records (default: HOST:PID).")
@click.option("--loopback-as", default="", metavar="ADDRESS",
              help="Unlocker mode: reach node addresses recorded on the controller's loopback "
                   "(a lab VM's forwarded ports) at ADDRESS (10.0.2.2 from a lab VM).")
@pass_context
def unlockd(ctx: Context, once: bool, interval: float, lease_ttl: float,
            confirm_timeout: float, probe_timeout: float, state_url: str | None,
            identity: Path | None, work_dir: Path | None, holder: str | None,
            loopback_as: str) -> None:
    from clonefleet.errors import ConfigError
    from clonefleet.fleetrun import failure_error
    from clonefleet.unlockd.instance import controller_unlockd, unlocker_store, unlocker_unlockd
    from clonefleet.unlockd.service import Settings

    if loopback_as:
        try:
            ipaddress.ip_address(loopback_as)
        except ValueError:
            raise ConfigError(f"--loopback-as {loopback_as!r} is not an IP address; give the "
                              "address the controller's loopback has from here, e.g. "
                              "10.0.2.2") from None
        if state_url is None:
            raise ConfigError("--loopback-as is for unlocker mode (--state, --identity): on "
                              "the controller the recorded addresses are its own")
    settings = Settings(holder=holder or f"{socket.gethostname()}:{os.getpid()}",
                        interval=interval, probe_timeout=probe_timeout, lease_ttl=lease_ttl,
                        confirm_timeout=confirm_timeout, loopback_as=loopback_as)
    started = time.monotonic()

    def log(message: str) -> None:
        click.echo(f"[{time.monotonic() - started:8.1f}s] {message}", err=True)

    if (state_url is None) != (identity is None):
        raise ConfigError("unlocker mode needs both --state and --identity (or neither, to run "
                          "on the controller from the fleet file)")
    if state_url is not None and identity is not None:
        folder = work_dir or _default_work_dir()
        store = unlocker_store(state_url, folder)
        service = unlocker_unlockd(store, identity, folder, settings, log)
    else:
        service = controller_unlockd(ctx.fleet, ctx.store, ctx.state_dir, settings, log)
    if once:
        outcomes = service.run_once()
        # What the pass started beside it: sshd confirmations, health checks and undrains
        # (the health check waits up to 300 s for a boot to finish).
        service.finish(confirm_timeout + 360)
        if ctx.as_json:
            ctx.emit({"nodes": [outcome.as_dict() for outcome in outcomes]})
        else:
            print_table(["NODE", "LIVE", "ACTION", "DETAIL"],
                        [(o.node, o.live, o.action, o.detail) for o in outcomes])
        error = failure_error("unlockd pass", len(outcomes),
                              [(o.node, o.action) for o in outcomes
                               if o.action in ("error", "failed")])
        if error is not None:
            raise error
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        service.run(stop)
    except KeyboardInterrupt:
        stop.set()
        log("interrupted")


def register(group: click.Group) -> None:
    group.add_command(unlockd)
