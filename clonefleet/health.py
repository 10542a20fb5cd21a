"""Is a node that just booted fit to be deployed (or put back into the DNS map)?

Asked over the node's own sshd once it answers: the root filesystem is mounted read-write,
every filesystem in its fstab is mounted, systemd finished booting and no unit failed. Each
problem becomes one finding in words an operator can act on; a node with findings is not
deployed, because a deploy onto a half-booted node fails in ways that hide the cause (a
read-only root makes every upload fail).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from clonefleet.errors import ClonefleetError
from clonefleet.ssh import RemoteShell

# How long `systemctl is-system-running --wait` may wait for the boot to finish. sshd
# answers before the rest of the boot is done, and under emulation that rest takes minutes.
BOOT_FINISH_SECONDS = 300

_PROBE = f"""
state=$(timeout {BOOT_FINISH_SECONDS} systemctl is-system-running --wait 2>/dev/null)
[ -n "$state" ] || state=$(systemctl is-system-running 2>/dev/null)
echo "state=$state"
echo "root=$(findmnt -no OPTIONS /)"
awk '$1 !~ /^#/ && $2 ~ /^\\// && $3 != "swap" && $4 !~ /noauto/ {{print "fstab=" $2}}' \
    /etc/fstab
findmnt -rno TARGET | sed 's/^/mounted=/'
systemctl list-units --failed --plain --no-legend --no-pager | awk '{{print "failed=" $1}}'
"""


class NodeUnhealthy(ClonefleetError):
    """A node booted but is not fit to deploy; the message lists every finding."""

    exit_code = 15


@dataclass(frozen=True)
class Health:
    state: str
    root_options: tuple[str, ...]
    unmounted: tuple[str, ...] = ()
    failed_units: tuple[str, ...] = ()
    findings: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.findings


def parse(output: str) -> Health:
    """Turn the probe's `key=value` lines into findings."""
    state, root = "unknown", ""
    in_fstab: list[str] = []
    mounted: set[str] = set()
    failed: list[str] = []
    for line in output.splitlines():
        key, _, value = line.partition("=")
        value = value.strip()
        if key == "state":
            state = value or "unknown"
        elif key == "root":
            root = value
        elif key == "fstab":
            in_fstab.append(value)
        elif key == "mounted":
            mounted.add(value.replace("\\x20", " "))
        elif key == "failed" and value:
            failed.append(value)
    options = tuple(option for option in root.split(",") if option)
    findings: list[str] = []
    if not options:
        findings.append("cannot tell how / is mounted")
    elif "rw" not in options:
        findings.append("the root filesystem is mounted read-only")
    unmounted = tuple(path for path in in_fstab if path != "/" and path not in mounted)
    if unmounted:
        findings.append(f"not mounted although in /etc/fstab: {', '.join(unmounted)}")
    if failed:
        findings.append(f"failed units: {', '.join(failed)}")
    if state not in ("running", "degraded") or (state == "degraded" and not failed):
        findings.append(f"systemd reports the system as {state!r}"
                        + (" (boot not finished)" if state in ("starting", "initializing")
                           else ""))
    return Health(state=state, root_options=options, unmounted=unmounted,
                  failed_units=tuple(failed), findings=tuple(findings))


def check(shell: RemoteShell) -> Health:
    """Probe the node behind `shell` (its own sshd)."""
    _, out, _ = shell.run(f"sh -c {shlex.quote(_PROBE)}", check=False,
                          timeout=BOOT_FINISH_SECONDS + 60, what="health check")
    return parse(out)


def require_healthy(shell: RemoteShell, node: str) -> Health:
    """Raise `NodeUnhealthy` with every finding in one line, or return the health."""
    health = check(shell)
    if not health.ok:
        raise NodeUnhealthy(
            f"{node} booted but is not fit to deploy: {'; '.join(health.findings)}; "
            f"look with `ssh root@{shell.access.host} -p {shell.access.port} journalctl -b`, "
            f"then reboot it and run `clonefleet provision {node}` again")
    return health
