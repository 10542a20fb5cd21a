"""rescue → install → reboot → unlock → deploy, resumable from the recorded lifecycle state.

Each step records its duration in the state store; every lifecycle transition records who
caused it. A re-run after a crash continues from the recorded state and never wipes a node
that reached `installed` unless asked to (`wipe=True`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clonefleet import keyslots, nodefacts
from clonefleet.deploy import DEFAULT_DEPLOY, describe_failure, describe_timings, run_deploy
from clonefleet.errors import DeployError, StateError
from clonefleet.health import require_healthy
from clonefleet.image.bake import bake_deploy, in_memory_folder
from clonefleet.image.base import BaseImage, ensure_base_image
from clonefleet.image.node import NodeLayerInput, NodeSecrets, build_node_layer
from clonefleet.install.plan import InstallPlan, make_plan
from clonefleet.install.rescue import RescueInstaller
from clonefleet.inventory import Fleet, Node
from clonefleet.keystore import Keystore
from clonefleet.known_hosts import fleet_known_hosts
from clonefleet.paths import cache_dir
from clonefleet.providers.base import Provider, SshAccess, node_network
from clonefleet.ssh import (
    OperatorKey,
    RemoteShell,
    ensure_operator_key,
    generate_ed25519,
    wait_for_ssh,
)
from clonefleet.state import StateStore, lifecycle
from clonefleet.unlock import unlock
from clonefleet.unlockd import boots
from clonefleet.unlockers import fleet_keystore, recipient_keys

BEFORE_INSTALL = (None, "ordered", "rescue")
# States a node reaches only after its first deploy: provision leaves them alone without --wipe.
PROVISIONED = ("deployed", "active", "draining", "drained", "updating")
ACTOR = "clonefleet provision"
INSTALL_STEPS = ("create server", "boot rescue", "build node layer", "install")


def remaining_steps(current: str | None, wipe: bool) -> list[str]:
    """The steps that bring a node from its recorded state to `deployed`, in order."""
    if current in PROVISIONED and not wipe:
        return []
    steps: list[str] = []
    if wipe or current in BEFORE_INSTALL:
        steps += INSTALL_STEPS
        current = "installed"
    if current == "installed":
        steps.append("boot from disk")
        current = "locked"
    if current == "locked":
        steps.append("unlock")
        current = "booted"
    if current == "booted":
        steps += ["health check", "deploy"]
    return steps


RECOVERY_KEY_ATTRIBUTE = "clonefleet_recovery_key"


def recovery_key_of(error: BaseException | None) -> str:
    """The recovery key installed by a run that then failed ("" for none)."""
    return str(getattr(error, RECOVERY_KEY_ATTRIBUTE, "") or "")


@dataclass
class ProvisionReport:
    node: str
    steps: list[tuple[str, float]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    final_state: str = ""
    deploy_changes: list[str] = field(default_factory=list)
    # Where the deploy's time went (`clonefleet.deploy.DeployResult.timings`).
    deploy_timings: dict[str, Any] = field(default_factory=dict)
    # The LUKS recovery key this run installed: shown once, never stored ("" for none).
    recovery_key: str = field(default="", repr=False)
    # Wall time of the whole run: less than the sum of the steps, since some overlap (the
    # node layer is built while the rescue system boots).
    wall_seconds: float | None = None

    @property
    def total_seconds(self) -> float:
        if self.wall_seconds is not None:
            return self.wall_seconds
        return sum(seconds for name, seconds in self.steps if not name.startswith("  "))


class _InBackground:
    """Run a function in a thread now; `join()` waits for it and raises what it raised."""

    def __init__(self, function: Callable[[], None], name: str) -> None:
        self._error: BaseException | None = None

        def run() -> None:
            try:
                function()
            except BaseException as error:
                self._error = error

        # A daemon: ^C in the caller ends the command without waiting for a provider.
        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


class Provisioner:
    """Given a fleet, its store and a provider, bring nodes from bare box to deployed."""

    def __init__(self, fleet: Fleet, store: StateStore, state_dir: Path, provider: Provider,
                 keystore: Keystore | None = None, log: Callable[[str], None] = print,
                 progress: Callable[[str, int, int], None] | None = None,
                 actor: str = ACTOR,
                 on_step: Callable[[str, str], None] | None = None,
                 deploy_ref: str = DEFAULT_DEPLOY) -> None:
        self.fleet = fleet
        self.deploy_ref = deploy_ref
        self.store = store
        self.state_dir = state_dir
        self.provider = provider
        self.keystore = keystore or fleet_keystore(state_dir, store)
        self.known_hosts = fleet_known_hosts(state_dir)
        self.log = log
        self.progress = progress
        self.actor = actor
        # (node, step) as each step starts: a live display follows steps without parsing
        # the log lines.
        self.on_step = on_step
        self._operator: OperatorKey | None = None

    @property
    def operator(self) -> OperatorKey:
        """The operator key, created on first real use (never by a dry run)."""
        if self._operator is None:
            self._operator = ensure_operator_key(self.fleet.ssh_key, self.state_dir)
        return self._operator

    # -- planning --------------------------------------------------------------------------

    def plan(self, node_name: str, wipe: bool = False) -> dict[str, Any]:
        """What `provision` would do now, touching nothing (for --dry-run)."""
        node = self.fleet.node(node_name)
        record = self.store.get(node.name)
        current = record.state if record else None
        steps = remaining_steps(current, wipe)
        description: dict[str, Any] = {"node": node.name, "provider": node.provider,
                                       "current_state": current or "ordered", "steps": steps}
        if not steps:
            description["note"] = "already provisioned; use --wipe to reinstall"
        if "install" in steps:
            description["install"] = make_plan(self.fleet, node,
                                               node_network(self.provider, node)).describe()
            if current not in BEFORE_INSTALL:
                description["warning"] = (f"--wipe: {node.name} is {current}; its disks will "
                                          "be erased")
        return description

    # -- running ---------------------------------------------------------------------------

    def provision(self, node_name: str, *, wipe: bool = False) -> ProvisionReport:
        node = self.fleet.node(node_name)
        report = ProvisionReport(node=node.name)
        record = self.store.get(node.name)
        current = record.state if record else None
        if current == "retired":
            raise StateError(f"node {node.name} is retired; remove it from the fleet file or "
                             "re-order it")
        if current in PROVISIONED and not wipe:
            report.skipped.append("all (already provisioned)")
            report.final_state = current or ""
            return report
        if current not in BEFORE_INSTALL and not wipe:
            self.log(f"{node.name}: resuming from state {current!r} (disks are kept)")
            if current == "booted" and self.provider.info(node).status == "off":
                current = "locked"  # powered off since: boot and unlock it again
        steps = remaining_steps(current, wipe)
        started = time.monotonic()
        if "install" in steps:
            self._install(node, report)
        try:
            if "boot from disk" in steps:
                self._step(report, "boot from disk", lambda: self._boot_disk(node))
            if "unlock" in steps:
                self._step(report, "unlock", lambda: self._unlock_step(node.name))
            if "health check" in steps:
                self._step(report, "health check", lambda: self._health_check(node))
            if "deploy" in steps:
                self._step(report, "deploy", lambda: self._deploy(node, report))
        except Exception as error:
            # The install worked: its recovery key must still reach the operator, with the
            # error that stopped the rest (`recovery_key_of`).
            if report.recovery_key:
                setattr(error, RECOVERY_KEY_ATTRIBUTE, report.recovery_key)
            raise
        final = self.store.get(node.name)
        report.final_state = final.state if final else ""
        report.wall_seconds = time.monotonic() - started
        return report

    def _step(self, report: ProvisionReport, step: str, function: Callable[[], None]) -> None:
        self.log(f"{report.node}: {step}")
        if self.on_step is not None:
            self.on_step(report.node, step)
        started = time.monotonic()
        try:
            function()
        except BaseException as error:
            self.store.record_step(report.node, step, "failed", time.monotonic() - started,
                                   str(error)[:500])
            raise
        seconds = time.monotonic() - started
        self.store.record_step(report.node, step, "done", seconds)
        report.steps.append((step, seconds))

    def _install(self, node: Node, report: ProvisionReport) -> None:
        self._step(report, "create server", lambda: self._create(node))
        network = node_network(self.provider, node)
        plan = make_plan(self.fleet, node, network)
        nodefacts.record_private_address(self.store, node.name, network.private_address)
        rescue: dict[str, SshAccess] = {}

        def boot_rescue() -> None:
            access = self.provider.boot_rescue(node, [self.operator.public_line])
            self.provider.wait_ready(access, node, 600, "rescue system ssh")
            rescue["access"] = access
            self.store.apply(node.name, lifecycle.BOOT_RESCUE, actor=self.actor,
                             reason="booted rescue system for install")

        # The node layer needs nothing from the rescue system, so it is built (and on a
        # first run the image with it) while the provider boots the rescue system. The
        # rescue boot's step is reported before the layer's, in the order they started.
        rescue_steps = ProvisionReport(node.name)
        booting = _InBackground(lambda: self._step(rescue_steps, "boot rescue", boot_rescue),
                                name=f"clonefleet-rescue-{node.name}")
        position = len(report.steps)
        # The layer holds the node's private keys and, with the deploy baked in, its
        # services' secrets: it is built and kept in memory only.
        with in_memory_folder(self.state_dir) as workspace:
            layer = workspace / f"{node.name}-layer.tar"
            layer_error: Exception | None = None
            try:
                base = ensure_base_image(cache_dir(), self.log)
                self._step(report, "build node layer", lambda: self._layer(
                    base, node, plan, layer, workspace, report))
            except Exception as error:  # reported once the rescue boot has ended too
                layer_error = error
            booting.join()
            report.steps[position:position] = rescue_steps.steps
            if layer_error is not None:
                raise layer_error
            self._step(report, "install", lambda: self._run_installer(
                base, node, plan, rescue["access"], layer, report))

    def _create(self, node: Node) -> None:
        info = self.provider.ensure_server(node)
        nodefacts.record_server(self.store, node.name, info)
        record = self.store.get(node.name)
        if record is None:
            self.store.apply(node.name, lifecycle.ORDER, actor=self.actor,
                             reason=f"{node.provider} server {info.server_id}")

    def _layer(self, base: BaseImage, node: Node, plan: InstallPlan, output: Path,
               workspace: Path, report: ProvisionReport) -> None:
        ssh_key = generate_ed25519(f"root@{node.name}")
        dropbear_key = generate_ed25519(f"dropbear@{node.name}")
        secrets = NodeSecrets(ssh_key.private_openssh, ssh_key.public_line,
                              dropbear_key.private_openssh, dropbear_key.public_line)
        nic_modules = nodefacts.load(self.store, node.name).nic_modules

        def bake(root: Path) -> None:
            # The deploy the node gets after its unlock, applied offline to its layer: the
            # node boots configured, and that deploy has little left to do.
            started = time.monotonic()
            result = bake_deploy(self.fleet.path, node.name, root, self.deploy_ref,
                                 tmp_dir=workspace)
            seconds = time.monotonic() - started
            report.steps.append(("  bake deploy", seconds))
            self.log(f"{node.name}: deploy baked into the node layer in {seconds:.0f} s "
                     f"({result.changed} operations changed it)")

        build_node_layer(base, NodeLayerInput(
            layout=plan.layout, secrets=secrets, network=plan.network,
            operator_keys=(self.operator.public_line,), nic_modules=nic_modules,
            unlock_keys=tuple(recipient_keys(self.store))),
            output, workspace, bake=bake)
        # Pinned before the node first boots them; a reinstall pins fresh keys, and its
        # known_hosts entries replace the old ones at once.
        nodefacts.record_host_keys(self.store, node.name, ssh_host_key=ssh_key.public_line,
                                   dropbear_host_key=dropbear_key.public_line)
        nodefacts.record_layout(self.store, node.name, plan.layout)
        nodefacts.load_pinned(self.store, node.name, self.known_hosts)

    def _run_installer(self, base: BaseImage, node: Node, plan: InstallPlan,
                       access: SshAccess, layer: Path, report: ProvisionReport) -> None:
        passphrase = self.keystore.create(node.name)
        # Generated here, sent to the rescue system on stdin and kept only in this run's
        # report: the operator stores it offline (see docs/keys.md).
        recovery_key = keyslots.new_recovery_key()
        what = f"{node.name} rescue system"
        # pinned=None: a rescue system is new on every boot. RemoteShell checks its key
        # against the fingerprints the provider's API gave (access.host_keys), if any.
        with wait_for_ssh(lambda: RemoteShell(access, self.operator.path, pinned=None,
                                              what=what), 120, what) as shell:
            how = ("matches the provider's fingerprints" if access.host_keys
                   else "trusted on first use (the provider reported no fingerprint)")
            self.log(f"{node.name}: rescue system host key {shell.host_key_fingerprint} {how}")
            installer = RescueInstaller(
                shell, plan, log=self.log,
                on_step=lambda step, seconds: report.steps.append((f"  {step}", seconds)))
            final_plan = installer.discover()
            nodefacts.record_disks(self.store, node.name, final_plan.disk_paths)
            installer.install(passphrase, base.tarball, layer, progress=self._copy_progress(
                node.name), recovery_key=recovery_key)
        keyslots.record_install(self.store, node.name)
        report.recovery_key = recovery_key
        self.store.apply(node.name, lifecycle.INSTALL, actor=self.actor,
                         reason="encrypted install finished")

    def _copy_progress(self, node: str) -> Callable[[int, int], None] | None:
        if self.progress is None:
            return None
        callback = self.progress
        return lambda sent, total: callback(f"{node}: copy image", sent, total)

    def _boot_disk(self, node: Node) -> None:
        self.provider.boot_disk(node)
        self.wait_for_dropbear(node)
        self.store.apply(node.name, lifecycle.LOCK, actor=self.actor,
                         reason="booted from disk, waiting for unlock")

    def wait_for_dropbear(self, node: Node, timeout: float | None = None) -> None:
        self.provider.wait_ready(nodefacts.load(self.store, node.name).require_unlock(), node,
                                 timeout or self.provider.boot_timeout,
                                 "Dropbear in the initramfs")

    def unlock(self, node_name: str, *, wait_for_sshd: bool = True,
               timeout: float | None = None) -> str:
        """Unlock a node waiting in its initramfs; then wait for sshd with its pinned key.
        `timeout` bounds each wait (default: the provider's boot timeout)."""
        node = self.fleet.node(node_name)
        timeout = timeout or self.provider.boot_timeout
        facts = nodefacts.load_pinned(self.store, node.name, self.known_hosts)
        if not facts.dropbear_host_key:
            raise StateError(f"no pinned Dropbear host key for {node.name}; it was not "
                             "installed by this controller")
        passphrase = self.keystore.get(node.name)
        started = time.monotonic()
        self.wait_for_dropbear(node, timeout)
        message = unlock(facts.require_unlock(), self.operator.path, self.known_hosts.path,
                         passphrase, what=node.name, log=self.log,
                         timeout=max(30.0, timeout - (time.monotonic() - started)))
        self.log(f"{node.name}: {message}")
        unlocked_at = time.time()
        # The boot unlockd may be watching is done: no instance sends to it again.
        boot = boots.current_boot(self.store, node.name)
        if boot is not None and boot.status in (boots.WAITING, boots.HELD):
            boots.record_unlock(self.store, node.name, boot.marker, by=self.actor,
                                at=unlocked_at)
        # The reboot a rollout or `power reset` announced is this one, unlocked: spent.
        boots.reboot_done(self.store, node.name, unlocked_at)
        if wait_for_sshd:
            self.wait_for_sshd(node, timeout)
        record = self.store.get(node.name)
        if record is not None and lifecycle.BOOT.allows(record.state):
            self.store.apply(node.name, lifecycle.BOOT, actor=self.actor,
                             reason="unlocked over Dropbear")
        return message

    def _unlock_step(self, node_name: str) -> None:
        node = self.fleet.node(node_name)
        if self.provider.info(node).status == "off":
            # Resuming after a crash: the box may have been powered off meanwhile.
            self.provider.boot_disk(node)
        self.unlock(node_name)

    def wait_for_sshd(self, node: Node, timeout: float | None = None) -> None:
        access = nodefacts.load(self.store, node.name).require_ssh()
        self.provider.wait_ready(access, node, timeout or self.provider.boot_timeout, "sshd")
        with self._sshd_shell(node) as shell:
            shell.run("true", what="ssh check")

    def _sshd_shell(self, node: Node) -> RemoteShell:
        """A session with the node's sshd, its key checked against the one pinned for it."""
        access = nodefacts.load_pinned(self.store, node.name, self.known_hosts).require_ssh()
        return wait_for_ssh(lambda: RemoteShell(access, self.operator.path,
                                                known_hosts=self.known_hosts.path,
                                                what=f"{node.name} sshd"), 120,
                            f"{node.name} sshd")

    def _health_check(self, node: Node) -> None:
        """A half-booted node (read-only root, a filesystem not mounted, a failed unit) is
        not deployed: the deploy would fail without naming the cause."""
        with self._sshd_shell(node) as shell:
            health = require_healthy(shell, node.name, self.log)
        self.log(f"{node.name}: healthy (systemd {health.state}, root "
                 f"{'rw' if 'rw' in health.root_options else 'ro'})")

    def _deploy(self, node: Node, report: ProvisionReport) -> None:
        results = run_deploy(self.fleet.path, [node.name], self.deploy_ref)
        result = results[node.name]
        if result.failed:
            raise DeployError(f"deploy failed on {node.name}: "
                              f"{describe_failure(result)}")
        report.deploy_changes = list(result.changed)
        report.deploy_timings = dict(result.timings)
        if result.timings:
            self.log(f"{node.name}: deploy: {describe_timings(result.timings)}")
        self.store.apply(node.name, lifecycle.DEPLOY, actor=self.actor,
                         reason=f"node deploy: {len(result.changed)} changes")
