"""One node's part of a rollout: drain → upgrade → reboot (unlock, sshd) → health → undrain.

Each step is recorded before and after it runs (`clonefleet.rollout.progress`), and as a step
record of the node (`update: STEP`, done or failed, with its seconds and detail). The node's
lifecycle moves through the named transitions only: `drain` and `settle` (the DNS map's
`drain_node` and `wait_until_drained`), `begin_update` before the upgrade, `finish_update`
once checked (or `fail_update` when a step failed), `undrain` (the DNS map's `undrain_node`).

Invariants:
- the node is changed (upgrade, reboot) only once every DNS server of a node in service has
  confirmed it no longer serves it, and the longest TTL plus the grace period has passed;
- a failing step leaves the node out of DNS (`drained`) with the failure recorded three ways:
  its progress, a failed step record, and a failed health check (source `rollout`), so a
  plain `clonefleet undrain` refuses it until a check passes (a resumed rollout's, or
  `--force`);
- a stop request (Ctrl-C) is honoured between steps: the step under way is finished, never
  cut off (an apt run killed halfway leaves dpkg to repair).
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from clonefleet import nodefacts
from clonefleet.dnsmap.drain import DrainResult, drain_node, undrain_node, wait_until_drained
from clonefleet.dnsmap.endpoints import Endpoints
from clonefleet.dnsmap.errors import DrainRefused
from clonefleet.errors import ClonefleetError, one_line
from clonefleet.health import require_healthy
from clonefleet.inventory import Fleet
from clonefleet.known_hosts import fleet_known_hosts
from clonefleet.rollout.apt import Upgrade, parse_simulation, reboot_packages
from clonefleet.rollout.boot_wait import wait_for_boot
from clonefleet.rollout.progress import (
    DRAIN,
    HEALTH,
    PROGRESS_FACT,
    REBOOT,
    STEP_PREFIX,
    UNDRAIN,
    UPGRADE,
    Progress,
)
from clonefleet.rollout.restarts import parse_needrestart, parse_reboot_flag
from clonefleet.ssh import RemoteShell, ensure_operator_key, wait_for_ssh
from clonefleet.state import StateStore, lifecycle
from clonefleet.unlockd.boots import expect_reboot

if TYPE_CHECKING:
    from clonefleet.provision import Provisioner

# The C locale (apt's words are parsed); never a prompt; needrestart restarts the services
# that run old code itself (`a`: automatic), as the plan announced.
ENVIRONMENT = "LANG=C LC_ALL=C DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a"
APT = ("apt-get -q -y -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef "
       "-o Dpkg::Options::=--force-confold")
# Finish what an interrupted dpkg left (a resumed rollout); while another apt or dpkg (e.g.
# unattended-upgrades, or the killed rollout's own apt still ending) holds dpkg's lock, wait
# up to 5 minutes, as apt-get does with DPkg::Lock::Timeout.
DPKG_FINISH = ('tries=0; until out=$(dpkg --configure -a 2>&1); do case "$out" in *lock*) '
               'tries=$((tries + 1)); [ "$tries" -lt 60 ] || { echo "$out"; exit 1; }; '
               'sleep 5;; *) echo "$out"; exit 1;; esac; done')
UPGRADE_SECONDS = 1800
SSH_SECONDS = 120
BOOT_ID = "cat /proc/sys/kernel/random/boot_id"
REBOOT_FLAG = ("if [ -e /var/run/reboot-required ]; then echo yes; "
               "cat /var/run/reboot-required.pkgs 2>/dev/null || true; else echo no; fi")
NEEDRESTART_LIST = ("if command -v needrestart >/dev/null 2>&1; then "
                    "LANG=C NEEDRESTART_MODE=l needrestart -b -r l; "
                    "else echo NEEDRESTART-MISSING; fi")
# The steps' events: start, done (detail: what happened), failed (detail: why), stopped.
StepEvent = Callable[[str, str, str, str], None]  # node, step, status, detail


class StepFailed(ClonefleetError):
    """A step of one node failed; the message says which and why in one line."""


class Deferred(ClonefleetError):
    """The drain was refused before anything changed (a region would fall below its
    minimum): the node stays active and waits for a later batch."""


class Stopped(ClonefleetError):
    """A stop was asked for (Ctrl-C, or the lock was lost) between two steps."""


@dataclass
class NodeRun:
    """What every node's steps need: the fleet, its store and folder, who acts, the rollout's
    id and selection, and time limits. `endpoints`: the DNS servers (default: the store's)."""

    fleet: Fleet
    store: StateStore
    state_dir: Path
    run: int
    actor: str
    everything: bool = False
    endpoints: Endpoints | None = None
    dns_timeout: float = 120.0
    settle_timeout: float = 900.0
    boot_timeout: float | None = None  # default: the provider's
    log: Callable[[str], None] = lambda _: None


def selected_upgrades(simulation_output: str, everything: bool) -> tuple[Upgrade, ...]:
    """The upgrades the rollout installs, from apt's simulation, chosen as the plan chose."""
    return parse_simulation(simulation_output).selected(everything)


def upgrade_command(upgrades: tuple[Upgrade, ...], everything: bool) -> str:
    """The apt command that installs `upgrades`: every upgrade (`dist-upgrade`) with
    `everything`; else the security updates of installed packages, each at the version the
    simulation chose (packages new to the node, such as a new kernel ABI package, come in as
    their dependencies, as the simulation showed)."""
    if everything:
        return f"{ENVIRONMENT} {APT} dist-upgrade"
    names = [f"{upgrade.name}={upgrade.new_version}" for upgrade in upgrades
             if upgrade.old_version is not None]
    return f"{ENVIRONMENT} {APT} install --no-remove " + " ".join(
        shlex.quote(name) for name in names)


def reboot_reasons(upgraded: tuple[str, ...], flag_output: str, needrestart_output: str,
                   boot_at_upgrade: str, boot_now: str) -> tuple[str, ...]:
    """Why the node must reboot now, given what the upgrade installed (package names), what
    the node says (reboot-required flag, needrestart's kernel status) and its boot ids at the
    upgrade and now. A node booted since the upgrade ran needs no reboot for it."""
    if boot_at_upgrade and boot_now and boot_now != boot_at_upgrade:
        return ()
    reasons = [f"upgraded {name}" for name in upgraded]
    flag = parse_reboot_flag(flag_output)
    if flag.required:
        asked = f" (asked by {', '.join(flag.packages)})" if flag.packages else ""
        reasons.append(f"/var/run/reboot-required is present{asked}")
    restarts = parse_needrestart(needrestart_output)
    if restarts.kernel_pending:
        reasons.append(f"needrestart: the running kernel {restarts.running_kernel or '?'} is "
                       f"not the newest installed ({restarts.kernel_description})")
    return tuple(reasons)


def unconfirmed_in_service(result: DrainResult, states: dict[str, str]) -> list[str]:
    """DNS servers that did not answer, among nodes in service. A server on a node that is
    out of service itself (being updated or drained: its PowerDNS may be down for its reboot)
    is caught up by the next publish; one on an active node may still send clients here."""
    return sorted(server for server in result.unreachable
                  if states.get(server, "active") == "active")


class NodeUpdate:
    """Runs the steps left for one node, recording each; `run()` returns the final progress
    or raises `StepFailed`, `Deferred` or `Stopped` (progress recorded in every case)."""

    def __init__(self, context: NodeRun, node: str, progress: Progress,
                 on_event: StepEvent = lambda *_: None,
                 stop: threading.Event | None = None) -> None:
        self.context = context
        self.node = node
        self.progress = progress
        self.on_event = on_event
        self.stop = stop or threading.Event()
        self.known_hosts = fleet_known_hosts(context.state_dir)

    # -- recording -------------------------------------------------------------------------

    def _save(self, progress: Progress) -> None:
        self.progress = progress
        self.context.store.set_fact(self.node, PROGRESS_FACT, progress.as_fact())

    def run(self, steps: tuple[str, ...]) -> Progress:
        functions = {DRAIN: self.drain, UPGRADE: self.upgrade, REBOOT: self.reboot,
                     HEALTH: self.health, UNDRAIN: self.undrain}
        for step in steps:
            if self.stop.is_set():
                self.on_event(self.node, step, "stopped", "not started: the rollout stops")
                raise Stopped(f"{self.node}: stopped before {step}")
            self._save(self.progress.started(step))
            self.on_event(self.node, step, "start", "")
            started = time.monotonic()
            try:
                detail = functions[step]()
            except Deferred as deferred:
                self._save(replace(self.progress, current=""))
                self.on_event(self.node, step, "deferred", str(deferred))
                raise
            except Exception as error:
                seconds = time.monotonic() - started
                message = one_line(error, 500) or type(error).__name__
                self.context.store.record_step(self.node, STEP_PREFIX + step, "failed",
                                               seconds, message)
                self._save(self.progress.failed(step, message))
                self._leave_drained(step, message)
                self.on_event(self.node, step, "failed", message)
                raise StepFailed(f"{self.node}: {step} failed: {message}") from error
            seconds = time.monotonic() - started
            self.context.store.record_step(self.node, STEP_PREFIX + step, "done", seconds,
                                           detail)
            self._save(self.progress.finished(step, seconds))
            self.on_event(self.node, step, "done", detail)
        return self.progress

    def _leave_drained(self, step: str, message: str) -> None:
        """After a failure: out of DNS with the reason recorded, never `updating` forever."""
        store = self.context.store
        record = store.get(self.node)
        if record is not None and lifecycle.FAIL_UPDATE.allows(record.state):
            store.apply(self.node, lifecycle.FAIL_UPDATE, actor=self.context.actor,
                        reason=f"rollout {self.context.run}: {step} failed: {message}")
        if step != DRAIN:
            store.record_health(self.node, False, source="rollout",
                                detail=f"rollout {self.context.run}: {step} failed: {message}")

    # -- SSH ---------------------------------------------------------------------------------

    def _shell(self, timeout: float = SSH_SECONDS) -> RemoteShell:
        """A session with the node's sshd, its key checked against the pinned one."""
        context = self.context
        key = ensure_operator_key(context.fleet.ssh_key, context.state_dir)
        access = nodefacts.load_pinned(context.store, self.node, self.known_hosts).require_ssh()
        return wait_for_ssh(lambda: RemoteShell(access, key.path,
                                                known_hosts=self.known_hosts.path,
                                                what=f"{self.node} sshd"),
                            timeout, f"{self.node} sshd")

    @staticmethod
    def _sh(shell: RemoteShell, script: str, what: str,
            timeout: float = SSH_SECONDS) -> tuple[int, str]:
        status, out, err = shell.run(f"sh -c {shlex.quote(script)}", check=False,
                                     timeout=timeout, what=what)
        return status, out + err

    # -- the steps -----------------------------------------------------------------------------

    def drain(self) -> str:
        context = self.context
        left_at = self.progress.left_dns_at or time.time()
        try:
            result = drain_node(
                context.fleet, context.store, self.node, actor=context.actor,
                reason=f"rollout {context.run}: package updates (clonefleet update; if it "
                       "stopped: clonefleet update --resume)",
                endpoints=context.endpoints, timeout=context.dns_timeout)
        except DrainRefused as refused:
            record = context.store.get(self.node)
            if record is not None and record.state == "active":
                raise Deferred(str(refused)) from None
            raise
        self._save(replace(self.progress, left_dns_at=left_at))
        states = {record.name: record.state for record in context.store.all()}
        missing = unconfirmed_in_service(result, states)
        if missing:
            named = ", ".join(f"{server} ({result.errors.get(server, '?')})"
                              for server in missing)
            raise StepFailed(f"DNS servers of nodes in service did not confirm the drain: "
                             f"{named}")
        state = wait_until_drained(context.fleet, context.store, self.node,
                                   timeout=context.settle_timeout)
        if state != "drained":
            raise StepFailed(f"expected drained after TTL and grace, found {state}")
        tolerated = f"; not confirmed by out-of-service {', '.join(result.unreachable)}" \
            if result.unreachable else ""
        return (f"out of DNS on {len(result.confirmed)} server(s), TTL and grace passed"
                f"{tolerated}")

    def upgrade(self) -> str:
        context = self.context
        record = context.store.get(self.node)
        if record is not None and record.state == "drained":
            context.store.apply(self.node, lifecycle.BEGIN_UPDATE, actor=context.actor,
                                reason=f"rollout {context.run}: upgrading")
        with self._shell() as shell:
            _, boot = self._sh(shell, BOOT_ID, "boot id")
            # A run stopped in the middle of dpkg is finished first (resume).
            status, output = self._sh(
                shell, f"export {ENVIRONMENT}; {DPKG_FINISH}; apt-get -q "
                       "-o DPkg::Lock::Timeout=300 --error-on=any update >/dev/null && "
                       "apt-get -s -o Debug::NoLocking=1 dist-upgrade",
                "apt simulation", UPGRADE_SECONDS)
            if status != 0:
                raise StepFailed(f"apt could not plan the upgrade (exit {status}): "
                                 f"{_tail(output)}")
            upgrades = selected_upgrades(output, context.everything)
            installed: tuple[str, ...] = ()
            if upgrades:
                _, auto = self._sh(shell, "apt-mark showauto", "apt-mark")
                status, output = self._sh(shell, upgrade_command(upgrades, context.everything),
                                          "apt upgrade", UPGRADE_SECONDS)
                if status != 0:
                    raise StepFailed(f"apt-get failed (exit {status}): {_tail(output)}")
                # apt-get install marks what it names as manually installed: put back the
                # automatic marks, so autoremove later still knows them.
                keep_auto = sorted({upgrade.name for upgrade in upgrades}
                                   & set(auto.split()))
                if keep_auto:
                    self._sh(shell, "apt-mark auto " + " ".join(map(shlex.quote, keep_auto))
                             + " >/dev/null", "apt-mark")
                installed = self._installed(shell, upgrades)
            reasons = reboot_reasons(reboot_packages(upgrades), *self._reboot_facts(shell),
                                     "", "")
        self._save(replace(self.progress, packages=installed, reboot_reasons=reasons,
                           boot_id=boot.strip()))
        return (f"{len(installed)} package(s) upgraded" if installed else "nothing to upgrade") \
            + (f"; reboot: {'; '.join(reasons)}" if reasons else "; no reboot needed")

    def _installed(self, shell: RemoteShell, upgrades: tuple[Upgrade, ...]) -> tuple[str, ...]:
        """The upgrades now installed at their new version, as `name old → new`."""
        names = " ".join(shlex.quote(upgrade.name) for upgrade in upgrades)
        _, output = self._sh(shell, f"dpkg-query -W -f '${{Package}} ${{Version}}\\n' {names}",
                             "dpkg-query")
        now = dict(line.split(" ", 1) for line in output.splitlines() if " " in line)
        return tuple(f"{upgrade.name} {upgrade.old_version or '(new)'} → {upgrade.new_version}"
                     for upgrade in upgrades if now.get(upgrade.name) == upgrade.new_version)

    def _reboot_facts(self, shell: RemoteShell) -> tuple[str, str]:
        _, flag = self._sh(shell, REBOOT_FLAG, "reboot flag")
        _, needrestart = self._sh(shell, NEEDRESTART_LIST, "needrestart")
        return flag, needrestart

    def reboot(self) -> str:
        """Reboot when the upgrade asked for it (and the node has not booted since), then
        unlock it through Dropbear and wait for sshd with its pinned key, as provision does.
        Looked at afresh on every run: a resumed rollout finds the node where it is (not
        rebooted yet, in its initramfs, or booted again)."""
        context = self.context
        try:
            shell = self._shell(timeout=30)
        except ClonefleetError:
            shell = None  # down: rebooting already, or waiting in its initramfs
        if shell is not None:
            with shell:
                _, boot = self._sh(shell, BOOT_ID, "boot id")
                packages = tuple(name.split(" ", 1)[0] for name in self.progress.packages)
                reasons = reboot_reasons(reboot_packages_named(packages),
                                         *self._reboot_facts(shell), self.progress.boot_id,
                                         boot.strip())
                if not reasons:
                    rebooted = self.progress.boot_id not in ("", boot.strip())
                    self._save(replace(self.progress, rebooted=rebooted))
                    return "rebooted and back" if rebooted else "not needed (services " \
                        "restarted by needrestart)"
                self._save(replace(self.progress, reboot_reasons=reasons))
                # Announced first: an unlockd sees a planned reboot and unlocks it at once,
                # whatever its policy for unexpected ones.
                expect_reboot(context.store, self.node, by=context.actor,
                              reason="rollout: " + "; ".join(reasons))
                # Detached and delayed: the command returns before sshd goes away.
                self._sh(shell, "nohup sh -c 'sleep 2; systemctl reboot' >/dev/null 2>&1 &",
                         "reboot")
        provisioner = self._provisioner()
        # A node silent past the boot time is power-reset once through its provider.
        waited = wait_for_boot(
            provisioner, self.node, context.boot_timeout, context.log,
            announce=lambda node, action: expect_reboot(
                context.store, node, by=context.actor,
                reason=f"rollout: power {action} after a hung reboot"))
        if waited.unlock:
            unlocked = "unlocked (" + provisioner.unlock(
                self.node, wait_for_sshd=True, timeout=context.boot_timeout) + ")"
        else:
            unlocked = "not unlocked here"
        with self._shell() as shell:
            _, boot = self._sh(shell, BOOT_ID, "boot id")
        if self.progress.boot_id and boot.strip() == self.progress.boot_id:
            raise StepFailed("sshd answers but the node did not reboot (same boot id)")
        self._save(replace(self.progress, rebooted=True))
        how = f"{waited.note}; " if waited.note else ""
        return f"rebooted, {how}{unlocked}, sshd answers with its pinned key"

    def _provisioner(self) -> Provisioner:
        from clonefleet.fleetrun import build_provisioner

        return build_provisioner(self.context.fleet, self.context.store,
                                 self.context.state_dir, self.node, log=self.context.log)

    def health(self) -> str:
        with self._shell() as shell:
            health = require_healthy(shell, self.node, self.context.log)
        detail = f"systemd {health.state}, root {'rw' if 'rw' in health.root_options else 'ro'}"
        self.context.store.record_health(self.node, True, source="rollout",
                                         detail=f"rollout {self.context.run}: {detail}")
        return detail

    def undrain(self) -> str:
        context = self.context
        record = context.store.get(self.node)
        if record is not None and record.state == "updating":
            context.store.apply(self.node, lifecycle.FINISH_UPDATE, actor=context.actor,
                                reason=f"rollout {context.run}: upgraded and healthy")
        result = undrain_node(context.fleet, context.store, self.node, actor=context.actor,
                              reason=f"rollout {context.run}: updated",
                              endpoints=context.endpoints, timeout=context.dns_timeout)
        seconds = time.time() - self.progress.left_dns_at \
            if self.progress.left_dns_at is not None else None
        self._save(replace(self.progress, out_of_dns_seconds=seconds))
        lagging = f"; not confirmed yet by {', '.join(result.unreachable)} (the next " \
            "publish catches them up)" if result.unreachable else ""
        return f"back in DNS on {len(result.confirmed)} server(s){lagging}"


def reboot_packages_named(names: tuple[str, ...]) -> tuple[str, ...]:
    """The names among `names` that make a node reboot (`apt.REBOOT_PACKAGES`)."""
    from clonefleet.rollout.apt import REBOOT_PACKAGES

    return tuple(name for name in names if REBOOT_PACKAGES.match(name))


def _tail(output: str, lines: int = 8) -> str:
    return " / ".join(line.strip() for line in output.strip().splitlines()[-lines:]
                      if line.strip())

