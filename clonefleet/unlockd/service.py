"""The unlockd loop: probe every node, unlock those waiting in their initramfs, by policy.

Invariants:
- A node is sent its passphrase only after its Dropbear answered the key exchange with the
  pinned initramfs host key and its sshd did not answer with its pinned key (liveprobe); the
  unlock connection itself checks the pinned key again. A port presenting any other key is
  sent nothing (the probe stops after the key exchange) and raises one alert per presented
  key.
- One unlocker per boot: the store lease `unlock:<node>:<marker>` (`boots`), renewed just
  before sending; the holder sends only while the boot is still `waiting` (or `held` and
  approved), and records it unlocked before releasing the lease.
- Every instance is enough alone: nothing here depends on which instance saw what first.
- Every wait is bounded (probe timeout, one unlock attempt); the long ones (sshd coming up,
  the health check before an undrain) run beside the passes, one per node.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clonefleet import nodefacts
from clonefleet.errors import ClonefleetError, LeaseHeld, LeaseLost, StateError, one_line
from clonefleet.known_hosts import KnownHosts
from clonefleet.liveprobe import LiveStatus, PortProbe, probe_node, probe_port
from clonefleet.state import FLEET_FACTS, StateStore, lifecycle
from clonefleet.unlock import BadPassphrase, TooManyTries, UnlockNotReady, send_passphrase
from clonefleet.unlockd import boots
from clonefleet.unlockd.policy import FleetUnlockPolicy, UnlockPolicy, decide

ACTOR = boots.ACTOR
# The fleet fact through which a controller's unlockd tells unlockers elsewhere (which have
# no fleet file) the policy, each node's region and where alerts go.
PUBLISHED = "unlockd_config"
UNPUBLISHED = FleetUnlockPolicy(UnlockPolicy("approve"))

Alert = Callable[[str, str], None]  # (title, body)
# Seconds between two health checks (for an undrain) of one node.
RETRY_BACKGROUND = 60.0
# Nodes unlockd watches: provisioned ones. Before that (`locked`), `clonefleet provision` is
# unlocking the node itself and unlockd keeps out of its way.
WATCHED_STATES = ("booted", "deployed", "active", "draining", "drained", "updating")


@dataclass(frozen=True)
class Settings:
    # This instance's name in leases and step records: unique per process.
    holder: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:"
                                                f"{uuid.uuid4().hex[:6]}")
    interval: float = 15.0  # seconds between passes
    probe_timeout: float = 5.0
    lease_ttl: float = 90.0  # a dead holder's boots go to another instance after this
    confirm_timeout: float = 600.0  # how long sshd may take to answer after an unlock
    parallel: int = 8
    # Where this instance reaches addresses recorded on the controller's loopback (a lab
    # VM's forwarded ports): "" on the controller itself, qemu's 10.0.2.2 on a lab VM.
    loopback_as: str = ""

    @property
    def attempt_timeout(self) -> float:
        # One unlock attempt must end well inside the lease, which is renewed only between
        # steps.
        return max(1.0, self.lease_ttl * 2 / 3)


@dataclass(frozen=True)
class NodeOutcome:
    node: str
    live: str
    action: str  # "none" | "unlocked" | "waiting" | "held" | "other-holder" | "alert" | ...
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "live": self.live, "action": self.action,
                "detail": self.detail}


def publish_config(store: StateStore, policy: FleetUnlockPolicy, regions: Mapping[str, str],
                   alert_urls: Sequence[str]) -> None:
    """What unlockers elsewhere need from the fleet file, into the store."""
    value = {"policy": policy.as_dict(), "regions": dict(regions),
             "alert_urls": list(alert_urls)}
    if store.get_fact(FLEET_FACTS, PUBLISHED) != value:
        store.set_fact(FLEET_FACTS, PUBLISHED, value)


def published_config(store: StateStore) -> tuple[FleetUnlockPolicy, dict[str, str], list[str]]:
    """What the controller published; before it did, unexpected reboots wait for an approval
    (an unlocker does not know the fleet's policy, so it takes the cautious one)."""
    value = store.get_fact(FLEET_FACTS, PUBLISHED)
    if not isinstance(value, dict):
        return UNPUBLISHED, {}, []
    return (FleetUnlockPolicy.from_dict(value.get("policy", {})),
            {str(node): str(region) for node, region in dict(value.get("regions", {})).items()},
            [str(url) for url in value.get("alert_urls", [])])


def store_nodes(store: StateStore) -> list[str]:
    """Every provisioned node the store records that has an unlock address."""
    return sorted(record.name for record in store.all()
                  if record.state in WATCHED_STATES and store.get_fact(record.name,
                                                                       nodefacts.UNLOCK_ACCESS))


class Unlockd:
    """One unlockd instance. `passphrase(node)` opens the node's entry (the controller's
    keystore, or an unlocker's escrow reader); `login_key` logs into Dropbear; `drain` and
    `undrain` (controller only: they need the fleet file) take a node out of DNS answers and
    back; without them the node's lifecycle state is moved in the store only."""

    def __init__(self, store: StateStore, known_hosts: KnownHosts, *,
                 nodes: Callable[[], Sequence[str]],
                 policy: Callable[[], FleetUnlockPolicy],
                 region_of: Callable[[str], str],
                 passphrase: Callable[[str], str], login_key: Path, alert: Alert,
                 settings: Settings | None = None,
                 log: Callable[[str], None] = print,
                 drain: Callable[[str, str], None] | None = None,
                 undrain: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.known_hosts = known_hosts
        self.nodes = nodes
        self.policy = policy
        self.region_of = region_of
        self.passphrase = passphrase
        self.login_key = login_key
        self.alert = alert
        self.settings = settings or Settings()
        self.log = log
        self.drain = drain
        self.undrain = undrain
        self.clock = clock
        self._said: dict[str, str] = {}  # node → last waiting message logged (log once)
        self._lock = threading.Lock()
        self._background: dict[str, threading.Thread] = {}
        self._background_started: dict[str, float] = {}

    # -- the loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Passes every `interval` seconds until `stop` is set (SIGTERM, ^C)."""
        self.log(f"unlockd {self.settings.holder}: watching every "
                 f"{self.settings.interval:g} s")
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.run_once()
            except ClonefleetError as error:  # the store unreachable: try again next pass
                self.log(f"unlockd: pass failed: {error}")
            stop.wait(max(0.0, self.settings.interval - (time.monotonic() - started)))
        self.log(f"unlockd {self.settings.holder}: stopped")

    def run_once(self) -> list[NodeOutcome]:
        names = list(self.nodes())
        if not names:
            return []
        with ThreadPoolExecutor(max_workers=max(1, min(self.settings.parallel,
                                                       len(names)))) as pool:
            return list(pool.map(self._node_safely, names))

    def _node_safely(self, node: str) -> NodeOutcome:
        try:
            return self.handle_node(node)
        except ClonefleetError as error:
            message = one_line(error)
            self._log_once(node, f"{node}: {message}")  # once, not every pass
            return NodeOutcome(node, "unknown", "error", message)

    # -- one node -------------------------------------------------------------------------

    def handle_node(self, node: str) -> NodeOutcome:
        facts = nodefacts.load_pinned(self.store, node, self.known_hosts,
                                        self.settings.loopback_as)
        seen_at = self.clock()
        # Not asking any provider: an unlocker holds no provider credentials.
        status = probe_node(facts, self.known_hosts, lambda: "unknown",
                            self.settings.probe_timeout)
        if status.live == "host-key-mismatch":
            return self._impostor(node, status)
        if status.live == "sshd":
            return self._sshd_seen(node, seen_at)
        if status.live in ("unreachable", "off"):
            boots.saw_silence(self.store, node, seen_at)
        if status.live != "initramfs":
            return NodeOutcome(node, status.live, "none", status.detail)
        boot, new = boots.saw_initramfs(self.store, node, seen_at)
        if boot is None:
            return NodeOutcome(node, "initramfs", "none", "stale sighting (sshd seen since)")
        if new:
            self._new_boot(node, boot)
        if boot.status in (boots.UNLOCKED, boots.FAILED):
            return NodeOutcome(node, "initramfs", "none", f"boot {boot.marker} is "
                                                          f"{boot.status} already")
        policy = self.policy().for_region(self.region_of(node))
        decision = decide(policy, first_seen=boot.first_seen, expected=boot.expected,
                          approved_at=boots.approval_at(self.store, node),
                          recent_unlocks=boots.unlock_history(self.store, node),
                          now=self.clock(), held=boot.status == boots.HELD)
        if decision.action == "hold":
            if boot.status != boots.HELD:
                boots.update_boot(self.store, node, boot.marker, status=boots.HELD)
            self._alert_once(node, f"hold:{boot.marker}", f"{node}: held in its initramfs",
                             f"{node} is not unlocked: {decision.reason}.")
            return NodeOutcome(node, "initramfs", "held", decision.reason)
        if decision.action == "wait":
            self._log_once(node, f"{node}: waiting in its initramfs ({decision.reason})")
            return NodeOutcome(node, "initramfs", "waiting", decision.reason)
        return self._unlock(node, boot, decision.reason)

    def _impostor(self, node: str, status: LiveStatus) -> NodeOutcome:
        wrong = [probe for probe in status.probes if probe.answer == "other-key"]
        for probe in wrong:
            self._alert_once(
                node, f"impostor:{probe.role}:{probe.presented_fingerprint}",
                f"{node}: {probe.role} presents an unknown host key (possible impostor)",
                f"{probe.role} at {probe.host}:{probe.port} presents "
                f"{probe.presented_fingerprint}; pinned: "
                f"{', '.join(probe.pinned_fingerprints)}. Nothing was sent to it. Check the "
                f"node out of band, then `clonefleet keys repin {node}`.")
        return NodeOutcome(node, "host-key-mismatch", "alert", status.detail)

    def _sshd_seen(self, node: str, seen_at: float) -> NodeOutcome:
        boot = boots.saw_sshd(self.store, node, seen_at)
        self._said.pop(node, None)
        if boot is not None and boot.drained and self.undrain is not None:
            self._in_background(node, lambda: self._return_to_dns(node, boot))
        return NodeOutcome(node, "sshd", "none", "up")

    def _in_background(self, node: str, work: Callable[[], None],
                       every: float = RETRY_BACKGROUND) -> None:
        """Run `work` (the sshd confirmation, the health check and undrain: each waits for
        the boot, minutes on a slow node) beside the passes, so it never holds up another
        node's unlock; one at a time per node, started at most once per `every` seconds."""
        with self._lock:
            running = self._background.get(node)
            if running is not None and running.is_alive():
                return
            if time.monotonic() - self._background_started.get(node, -1e9) < every:
                return
            self._background_started[node] = time.monotonic()
            thread = threading.Thread(target=self._guarded(node, work),
                                      name=f"unlockd-{node}", daemon=True)
            self._background[node] = thread
            thread.start()

    def _guarded(self, node: str, work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except ClonefleetError as error:
                self._log_once(node, f"{node}: {one_line(error)}")

        return run

    def finish(self, timeout: float) -> None:
        """Wait (at most `timeout` seconds) for background work to end (`--once`, tests)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._background.values())
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _new_boot(self, node: str, boot: boots.Boot) -> None:
        policy = self.policy().for_region(self.region_of(node))
        if boot.expected:
            kind = f"an expected reboot (announced by {boot.expected_by or 'an operator'})"
        else:
            kind = "an unexpected reboot"
        self.log(f"{node}: waiting in its initramfs after {kind} (boot {boot.marker})")
        self._alert_once(node, f"boot:{boot.marker}", f"{node}: rebooted, waiting for unlock",
                         f"{node} waits in its initramfs after {kind}; {policy.describe()}.")
        if not boot.expected:
            self._take_out_of_dns(node, boot)

    def _take_out_of_dns(self, node: str, boot: boots.Boot) -> None:
        """An unexpected reboot of a node in DNS answers: drain it with a recorded reason."""
        record = self.store.get(node)
        if record is None or record.state != "active":
            return
        reason = f"unexpected reboot seen by unlockd (boot {boot.marker})"
        try:
            if self.drain is not None:
                self.drain(node, reason)
            else:
                self.store.apply(node, lifecycle.DRAIN, actor=ACTOR, reason=reason)
        except ClonefleetError as error:
            # The drain may be recorded while a DNS server lags behind (DrainNotConfirmed):
            # what counts below is the state it left.
            self.log(f"{node}: drain: {one_line(error)}")
        record = self.store.get(node)
        if record is not None and record.state in ("draining", "drained"):
            boots.update_boot(self.store, node, boot.marker, drained=True)

    def _return_to_dns(self, node: str, boot: boots.Boot) -> None:
        assert self.undrain is not None
        try:
            self.undrain(node, f"unlocked and healthy after boot {boot.marker}")
        except ClonefleetError as error:
            self._log_once(node, f"{node}: stays out of DNS: {error}")
            return
        boots.update_boot(self.store, node, boot.marker, drained=False)
        self.log(f"{node}: back in DNS answers")

    def _unlock(self, node: str, boot: boots.Boot, why: str) -> NodeOutcome:
        name = boots.lease_name(node, boot.marker)
        holder = self.settings.holder
        try:
            self.store.take_lease(name, holder, self.settings.lease_ttl)
        except LeaseHeld as error:
            return NodeOutcome(node, "initramfs", "other-holder", str(error))
        released = False
        try:
            current = boots.current_boot(self.store, node)
            if current is None or current.marker != boot.marker or current.status not in (
                    boots.WAITING, boots.HELD):
                return NodeOutcome(node, "initramfs", "none", "unlocked by another instance")
            passphrase = self.passphrase(node)
            access = nodefacts.load_pinned(self.store, node, self.known_hosts,
                                           self.settings.loopback_as).require_unlock()
            self.store.renew_lease(name, holder)
            self.log(f"{node}: unlocking boot {boot.marker} ({why})")
            started = time.monotonic()
            try:
                message = send_passphrase(access, self.login_key, self.known_hosts.path,
                                          passphrase, timeout=self.settings.attempt_timeout)
            except UnlockNotReady as error:
                self.log(f"{node}: not ready: {error}")
                return NodeOutcome(node, "initramfs", "waiting", str(error))
            except (BadPassphrase, TooManyTries) as error:
                boots.update_boot(self.store, node, boot.marker, status=boots.FAILED)
                self.store.record_step(node, "unlockd unlock", "failed",
                                       time.monotonic() - started, str(error)[:500])
                self._alert_once(node, f"failed:{boot.marker}", f"{node}: unlock failed",
                                 f"{node}: {error}. unlockd does not try this boot again.")
                return NodeOutcome(node, "initramfs", "failed", str(error))
            unlocked_at = self.clock()
            boots.record_unlock(self.store, node, boot.marker, by=holder, at=unlocked_at)
            self.store.record_step(node, "unlockd unlock", "done",
                                   time.monotonic() - started, f"{why}; {message}")
            self.log(f"{node}: {message}")
            # The boot is recorded unlocked: nobody sends to it again, the lease has done
            # its work. sshd is confirmed beside the passes (minutes on a slow boot).
            released = True
            self.store.release_lease(name, holder)
            self._in_background(node, lambda: self._after_unlock(node), every=0.0)
            return NodeOutcome(node, "initramfs", "unlocked", f"{message}; confirming sshd")
        except LeaseLost as error:
            released = True
            return NodeOutcome(node, "initramfs", "lease-lost", str(error))
        finally:
            if not released:
                with contextlib.suppress(StateError):
                    self.store.release_lease(name, holder)

    def _after_unlock(self, node: str) -> None:
        """Confirm sshd; then the node is booted, and back in DNS if unlockd drained it."""
        if not self._confirm_sshd(node):
            return
        record = self.store.get(node)
        if record is not None and lifecycle.BOOT.allows(record.state):
            self.store.apply(node, lifecycle.BOOT, actor=ACTOR, reason="unlocked over Dropbear")
        boot = boots.saw_sshd(self.store, node, self.clock())
        if boot is not None and boot.drained and self.undrain is not None:
            self._return_to_dns(node, boot)

    def _confirm_sshd(self, node: str) -> bool:
        """Wait (bounded) for sshd to answer with its pinned key; record the step."""
        started = time.monotonic()
        deadline = started + self.settings.confirm_timeout
        facts = nodefacts.load_pinned(self.store, node, self.known_hosts,
                                        self.settings.loopback_as)
        if facts.ssh is None:
            return False
        probe: PortProbe | None = None
        while time.monotonic() < deadline:
            probe = probe_port(nodefacts.SSHD, facts.ssh, self.known_hosts,
                               min(self.settings.probe_timeout,
                                   max(0.1, deadline - time.monotonic())))
            if probe.answer == "pinned":
                self.store.record_step(node, "unlockd confirm sshd", "done",
                                       time.monotonic() - started)
                return True
            if probe.answer == "other-key":
                break
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        detail = (f"sshd presents {probe.presented_fingerprint}, not the pinned key"
                  if probe is not None and probe.answer == "other-key"
                  else f"sshd did not answer within {self.settings.confirm_timeout:g} s")
        self.store.record_step(node, "unlockd confirm sshd", "failed",
                               time.monotonic() - started, detail)
        self._alert_once(node, f"confirm:{int(started)}", f"{node}: unlocked, but sshd is not "
                         "up", f"{node} accepted its passphrase, but {detail}.")
        return False

    # -- reporting ------------------------------------------------------------------------

    def _alert_once(self, node: str, key: str, title: str, body: str) -> None:
        if boots.claim_alert(self.store, node, key, self.clock()):
            self.log(title)
            try:
                self.alert(title, body)
            except Exception as error:  # an alert channel must not stop unlocks
                self.log(f"{node}: alert not sent: {error}")

    def _log_once(self, node: str, message: str) -> None:
        if self._said.get(node) != message:
            self._said[node] = message
            self.log(message)


def apprise_alert(urls: Sequence[str], log: Callable[[str], None]) -> Alert:
    """Alerts through apprise to the fleet's alert URLs (smartwatch's sender), or the log
    when there are none."""
    if not urls:
        return lambda title, body: log(f"ALERT {title}: {body}")
    from smartwatch.notify import AppriseNotifier, Notice

    notifier = AppriseNotifier(tuple(urls))

    def send(title: str, body: str) -> None:
        if not notifier.send(Notice(kind="unlockd", key=title, severity="warning",
                                      title=title, body=body)):
            log(f"alert not delivered: {title}")

    return send
