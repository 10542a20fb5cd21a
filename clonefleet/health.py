"""Is a node that just booted fit to be deployed (or put back into the DNS map)?

Asked over the node's own sshd once it answers: the root filesystem is mounted read-write,
every filesystem in its fstab is mounted, systemd finished booting and no unit failed (a
unit whose start only timed out, as on a boot starved of CPU, gets one more try). Each
problem becomes one finding in words an operator can act on; a node with findings is not
deployed, because a deploy onto a half-booted node fails in ways that hide the cause (a
read-only root makes every upload fail).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, replace

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
for unit in $(systemctl list-units --failed --plain --no-legend --no-pager | awk '{{print $1}}')
do
    echo "failed=$unit $(systemctl show -p Result --value "$unit")"
done
"""
# A start job that ran out of time (systemd's `Result=timeout`) on a boot starved of CPU is
# not a fault of the node: such units are restarted once before they count as findings.
RESTART_SECONDS = 120


class NodeUnhealthy(ClonefleetError):
    """A node booted but is not fit to deploy; the message lists every finding."""

    exit_code = 15


@dataclass(frozen=True)
class Health:
    state: str
    root_options: tuple[str, ...]
    unmounted: tuple[str, ...] = ()
    failed_units: tuple[str, ...] = ()
    failed_results: dict[str, str] = field(default_factory=dict)
    findings: tuple[str, ...] = field(default=())
    # Units that had timed out at boot and were started again successfully.
    restarted: tuple[str, ...] = ()
    # fstab entries that were not mounted at boot and mounted fine on a second try.
    remounted: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.findings


def parse(output: str) -> Health:
    """Turn the probe's `key=value` lines into findings."""
    state, root = "unknown", ""
    in_fstab: list[str] = []
    mounted: set[str] = set()
    failed: dict[str, str] = {}
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
            unit, _, result = value.partition(" ")
            failed[unit] = result.strip()
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
        findings.append("failed units: " + ", ".join(
            f"{unit} ({result})" if result else unit for unit, result in failed.items()))
    if state not in ("running", "degraded") or (state == "degraded" and not failed):
        findings.append(f"systemd reports the system as {state!r}"
                        + (" (boot not finished)" if state in ("starting", "initializing")
                           else ""))
    return Health(state=state, root_options=options, unmounted=unmounted,
                  failed_units=tuple(failed), failed_results=failed,
                  findings=tuple(findings))


def _probe(shell: RemoteShell) -> Health:
    _, out, _ = shell.run(f"sh -c {shlex.quote(_PROBE)}", check=False,
                          timeout=BOOT_FINISH_SECONDS + 60, what="health check")
    return parse(out)


def check(shell: RemoteShell) -> Health:
    """Probe the node behind `shell` (its own sshd); units that only timed out are started
    once more, fstab entries left unmounted are mounted once more (on a boot starved of CPU
    their device or fsck job can run out of time; `nofail` lets the boot go on without them),
    and the node probed again."""
    health = _probe(shell)
    timed_out = [unit for unit, result in health.failed_results.items() if result == "timeout"]
    if not timed_out and not health.unmounted:
        return health
    if timed_out:
        units = " ".join(shlex.quote(unit) for unit in timed_out)
        shell.run(f"systemctl reset-failed {units}; timeout {RESTART_SECONDS} "
                  f"systemctl restart {units}", check=False, timeout=RESTART_SECONDS + 30,
                  what="restart of units that timed out")
    for path in health.unmounted:
        shell.run(f"timeout {RESTART_SECONDS} mount {shlex.quote(path)}", check=False,
                  timeout=RESTART_SECONDS + 30, what=f"mount of {path}")
    again = _probe(shell)
    restarted = tuple(unit for unit in timed_out if unit not in again.failed_results)
    remounted = tuple(path for path in health.unmounted if path not in again.unmounted)
    return replace(again, restarted=restarted, remounted=remounted)


def require_healthy(shell: RemoteShell, node: str,
                    log: Callable[[str], None] = lambda _: None) -> Health:
    """Raise `NodeUnhealthy` with every finding in one line, or return the health. Units
    restarted after a timeout are told to `log` either way."""
    health = check(shell)
    if health.restarted:
        log(f"{node}: restarted {', '.join(health.restarted)} (timed out at boot, started "
            "fine on a second try)")
    if health.remounted:
        log(f"{node}: mounted {', '.join(health.remounted)} (not mounted at boot, mounted "
            "fine on a second try)")
    if not health.ok:
        raise NodeUnhealthy(
            f"{node} booted but is not fit to deploy: {'; '.join(health.findings)}; "
            f"look with `ssh root@{shell.access.host} -p {shell.access.port} journalctl -b`, "
            f"then reboot it and run `clonefleet provision {node}` again")
    return health
