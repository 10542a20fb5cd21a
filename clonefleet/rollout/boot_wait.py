"""Waiting for a node the rollout rebooted, and the one power reset of a node that hangs.

A reboot can hang where nothing of the node answers any more: firmware stuck after the reset,
a kernel that never reaches its initramfs. An operator would reset the server through the
provider and wait again; so does the rollout, at most once per reboot step:

- the wait for Dropbear in the initramfs (the provider's boot time, or `--boot-timeout`)
  runs out, or the provider says the server stopped;
- the node is probed as `clonefleet status --live` probes it (the SSH key exchange only,
  keys compared with the pins; nothing is sent):
  - `initramfs`: it answers now: unlock as usual;
  - `sshd`: it booted and was unlocked meanwhile (unlockd, an operator): nothing to unlock;
  - `unreachable` (the provider says it is on): `reset` through the provider, wait again;
  - `off`: `power on` through the provider, wait again;
  - anything else (a host-key mismatch, nothing pinned): the step fails, nothing was sent;
- silent again after the reset, the step fails with both waits and the reset named.

Invariant: nothing is reset while one of the node's SSH servers answers with its pinned key,
and never twice in one step (a node that hangs twice needs a person).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clonefleet import nodefacts
from clonefleet.errors import ClonefleetError, one_line
from clonefleet.liveprobe import LiveStatus, probe_node

if TYPE_CHECKING:
    from clonefleet.inventory import Node
    from clonefleet.power import PowerAction
    from clonefleet.provision import Provisioner

Probe = Callable[["Provisioner", "Node"], LiveStatus]


class BootHung(ClonefleetError):
    """The node gave no sign of life after its reboot, even after a power reset."""


@dataclass(frozen=True)
class BootWait:
    unlock: bool  # Dropbear answers: the node waits for its passphrase
    note: str = ""  # what was done on the way ("" when Dropbear answered in time)


def live_status(provisioner: Provisioner, node: Node) -> LiveStatus:
    """`clonefleet status --live`'s word for the node now."""
    facts = nodefacts.load_pinned(provisioner.store, node.name, provisioner.known_hosts)
    return probe_node(facts, provisioner.known_hosts,
                      lambda: provisioner.provider.info(node).status)


def wait_for_boot(provisioner: Provisioner, node_name: str, timeout: float | None,
                  log: Callable[[str], None], *,
                  announce: Callable[[str, PowerAction], None],
                  probe: Probe | None = None,
                  clock: Callable[[], float] = time.monotonic) -> BootWait:
    """Wait for the rebooting node's Dropbear; power-reset it once if it stays silent.
    The reset is `clonefleet power`'s (`clonefleet.power.power`): `announce(node, action)`
    runs before it and tells unlockd the coming boot is expected
    (`clonefleet.unlockd.boots.expect_reboot`), as the reboot itself was."""
    from clonefleet.power import power

    node = provisioner.fleet.node(node_name)
    limit = timeout or provisioner.provider.boot_timeout
    started = clock()
    try:
        provisioner.wait_for_dropbear(node, limit)
        return BootWait(unlock=True)
    except ClonefleetError as error:
        first = one_line(error)
    silent = clock() - started
    status = (probe or live_status)(provisioner, node)
    if status.live == "initramfs":
        return BootWait(unlock=True)
    if status.live == "sshd":
        return BootWait(unlock=False, note=f"no Dropbear seen in {silent:.0f} s, and sshd "
                                           "answers with its pinned key (unlocked meanwhile)")
    if status.live not in ("unreachable", "off"):
        raise BootHung(f"{first}; then: {status.detail}")
    action: PowerAction = "on" if status.live == "off" else "reset"
    note = f"no sign of life {silent:.0f} s after the reboot ({status.detail}): power " \
           f"{action} through {node.provider}"
    log(f"{node_name}: {note}")
    [outcome] = power(action, [node_name], provisioner.fleet, lambda _: provisioner.provider,
                      log=log, announce=announce)
    if not outcome.ok:
        raise BootHung(f"{first}; power {action} through {node.provider} failed: "
                       f"{outcome.error}") from outcome.failure
    try:
        provisioner.wait_for_dropbear(node, limit)
    except ClonefleetError as error:
        raise BootHung(f"{note}; silent again: {one_line(error)}") from error
    return BootWait(unlock=True, note=note)
