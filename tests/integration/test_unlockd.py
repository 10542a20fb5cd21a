"""unlockd against a real Dropbear (stand-in cryptroot-unlock that counts every passphrase it
reads), a real sshd (the node "after boot") and, for several instances, a real etcd.

A `Node` here is one Dropbear and one sshd on loopback with their keys pinned in the store:
it "boots" when the stand-in accepts the passphrase (Dropbear stops, sshd starts), as a real
node leaves its initramfs. No VM: what remains for lab VMs is listed in docs/unlockd.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dropbear_fixture import Dropbear, dropbear_available, make_dropbear
from etcd_fixture import EtcdServer
from fleet_text import FSN, FleetNode, fleet_toml
from sshd_fixture import Sshd
from webhook_fixture import Webhook

from clonefleet import nodefacts
from clonefleet.inventory import load_fleet
from clonefleet.keystore import Keystore
from clonefleet.known_hosts import KnownHosts
from clonefleet.ssh import generate_ed25519
from clonefleet.state import StateConfig, StateStore, open_store
from clonefleet.unlockd import boots
from clonefleet.unlockd.instance import controller_unlockd, unlocker_unlockd
from clonefleet.unlockd.policy import FleetUnlockPolicy, UnlockPolicy
from clonefleet.unlockd.service import Settings, Unlockd, apprise_alert, publish_config
from clonefleet.unlockers import fleet_keystore, grant, revoke

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not dropbear_available(), reason="dropbear not installed")]

NODE = "n1"


@dataclass
class Node:
    dropbear: Dropbear
    sshd: Sshd
    booted: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    watcher: threading.Thread | None = None
    # Seconds Dropbear keeps answering after the unlock (a slow hand-over to the system).
    boot_delay: float = 0.2

    def wait_in_initramfs(self) -> None:
        """Power on into the initramfs: Dropbear up, sshd down; boots once unlocked."""
        self.booted.clear()
        self.stop.clear()
        self.dropbear.start()
        self.watcher = threading.Thread(target=self._boot_when_unlocked, daemon=True)
        self.watcher.start()

    def _boot_when_unlocked(self) -> None:
        count = len(self.dropbear.deliveries())
        while not self.stop.is_set():
            if self.dropbear.deliveries()[count:].count("ok"):
                time.sleep(self.boot_delay)  # the unlock's own connection ends first
                self.dropbear.stop()
                self.sshd.start()
                self.booted.set()
                return
            time.sleep(0.05)

    def reboot(self) -> None:
        """Back into the initramfs, behind anybody's back."""
        self.sshd.stop()
        self.wait_in_initramfs()

    def close(self) -> None:
        self.stop.set()
        if self.watcher is not None:
            self.watcher.join(5)
        self.dropbear.stop()
        if self.sshd.process.poll() is None:
            self.sshd.stop()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    sshd = Sshd(tmp_path / "sshd")
    sshd.stop()
    made = Node(make_dropbear(tmp_path / "dropbear"), sshd)
    yield made
    made.close()


def record_node(store: StateStore, node: Node, state: str = "active",
                dropbear_key: str | None = None) -> None:
    store.set_state(NODE, state, actor="test")
    store.set_fact(NODE, nodefacts.UNLOCK_ACCESS, {"host": "127.0.0.1",
                                                   "port": node.dropbear.port})
    store.set_fact(NODE, nodefacts.SSH_ACCESS, {"host": "127.0.0.1", "port": node.sshd.port})
    store.set_fact(NODE, nodefacts.DROPBEAR_HOST_KEY, dropbear_key or node.dropbear.host_key)
    store.set_fact(NODE, nodefacts.SSH_HOST_KEY, node.sshd.host_key)


def make_unlockd(store: StateStore, folder: Path, node: Node, *, holder: str = "a",
                 policy: UnlockPolicy | None = None, alerts: list[str] | None = None,
                 alert: object = None, lease_ttl: float = 6.0) -> Unlockd:
    sent = alerts if alerts is not None else []
    folder.mkdir(parents=True, exist_ok=True)
    return Unlockd(
        store, KnownHosts(folder / "known_hosts"), nodes=lambda: [NODE],
        policy=lambda: FleetUnlockPolicy(policy or UnlockPolicy()),
        region_of=lambda _: "fsn", passphrase=lambda _: node.dropbear.passphrase,
        login_key=node.dropbear.operator_key,
        alert=alert or (lambda title, body: sent.append(title)),  # type: ignore[arg-type]
        settings=Settings(holder=holder, interval=0.3, probe_timeout=2.0, lease_ttl=lease_ttl,
                          confirm_timeout=20.0), log=lambda _: None)


def test_node_in_its_initramfs_is_unlocked_once_and_sshd_confirmed(
        tmp_path: Path, node: Node) -> None:
    store = open_store(tmp_path)
    record_node(store, node)
    alerts: list[str] = []
    service = make_unlockd(store, tmp_path / "a", node, alerts=alerts)
    node.wait_in_initramfs()
    [outcome] = service.run_once()
    assert (outcome.live, outcome.action) == ("initramfs", "unlocked"), outcome
    assert outcome.detail.endswith("; confirming sshd")
    service.finish(30)  # sshd is confirmed beside the passes
    assert node.dropbear.deliveries() == ["ok"]
    steps = {(step.step, step.status) for step in store.steps(NODE)}
    assert {("unlockd unlock", "done"), ("unlockd confirm sshd", "done")} <= steps
    # An unexpected reboot of an active node: out of DNS answers, with the reason recorded.
    record = store.get(NODE)
    assert record is not None and record.state == "draining"
    assert "unexpected reboot seen by unlockd" in record.reason
    assert alerts == [f"{NODE}: rebooted, waiting for unlock"]
    # The next pass finds sshd up: nothing is sent again.
    [again] = service.run_once()
    assert (again.live, again.action) == ("sshd", "none")
    assert node.dropbear.deliveries() == ["ok"]


def test_dropbear_with_another_host_key_is_sent_nothing_and_alerted_once(
        tmp_path: Path, node: Node) -> None:
    store = open_store(tmp_path)
    record_node(store, node, dropbear_key=generate_ed25519("pinned").public_line)
    hook = Webhook()
    try:
        service = make_unlockd(store, tmp_path / "a", node,
                               alert=apprise_alert([hook.url], lambda _: None))
        node.wait_in_initramfs()
        outcomes = [service.run_once()[0] for _ in range(3)]
        assert {(o.live, o.action) for o in outcomes} == {("host-key-mismatch", "alert")}
        assert node.dropbear.deliveries() == []
        # Not even an attempt to log in: every connection ended before authentication.
        deadline = time.monotonic() + 5
        log = node.dropbear.log()
        while log.count("Child connection") != log.count("Exit before auth") \
                and time.monotonic() < deadline:
            time.sleep(0.1)  # Dropbear logs a connection's end a moment after it
            log = node.dropbear.log()
        assert log.count("Child connection") == log.count("Exit before auth") >= 3
        assert "auth succeeded" not in log and "pubkey" not in log.lower()
        titles = hook.titles()
        assert titles == [f"{NODE}: dropbear presents an unknown host key (possible impostor)"]
        assert "Nothing was sent to it" in str(hook.received[0].get("message", ""))
    finally:
        hook.stop()


def test_policy_approve_waits_until_an_operator_approves(tmp_path: Path, node: Node) -> None:
    store = open_store(tmp_path)
    record_node(store, node)
    service = make_unlockd(store, tmp_path / "a", node, policy=UnlockPolicy("approve"))
    node.wait_in_initramfs()
    for _ in range(2):
        [outcome] = service.run_once()
        assert outcome.action == "waiting" and "--approve" in outcome.detail
    assert node.dropbear.deliveries() == []
    boots.approve(store, NODE, by="operator")
    [outcome] = service.run_once()
    assert outcome.action == "unlocked"
    service.finish(30)
    assert node.dropbear.deliveries() == ["ok"]


def test_expected_reboot_is_unlocked_at_once_under_approve_and_stays_in_dns(
        tmp_path: Path, node: Node) -> None:
    store = open_store(tmp_path)
    record_node(store, node)
    boots.expect_reboot(store, NODE, by="clonefleet power reset")
    service = make_unlockd(store, tmp_path / "a", node, policy=UnlockPolicy("approve"))
    node.wait_in_initramfs()
    [outcome] = service.run_once()
    assert outcome.action == "unlocked"
    service.finish(30)
    record = store.get(NODE)
    assert record is not None and record.state == "active"


def test_node_rebooting_again_and_again_is_held_and_reported(tmp_path: Path,
                                                              node: Node) -> None:
    store = open_store(tmp_path)
    record_node(store, node)
    now = time.time()
    store.set_fact(NODE, boots.HISTORY, [now - 600, now - 300, now - 60])
    alerts: list[str] = []
    service = make_unlockd(store, tmp_path / "a", node, alerts=alerts,
                           policy=UnlockPolicy("immediate", loop_unlocks=3))
    node.wait_in_initramfs()
    [outcome] = service.run_once()
    assert outcome.action == "held" and "reboot loop: unlocked 3 times" in outcome.detail
    [outcome] = service.run_once()
    assert outcome.action == "held" and "--approve" in outcome.detail
    assert node.dropbear.deliveries() == []
    assert alerts.count(f"{NODE}: held in its initramfs") == 1
    boots.approve(store, NODE, by="operator")
    assert service.run_once()[0].action == "unlocked"
    service.finish(30)
    assert node.dropbear.deliveries() == ["ok"]


def test_two_instances_on_one_etcd_unlock_each_boot_exactly_once(
        tmp_path: Path, node: Node, etcd_server: EtcdServer) -> None:
    config = etcd_server.config(f"test/{os.urandom(6).hex()}")
    first, second = open_store(tmp_path, config), open_store(tmp_path, config)
    record_node(first, node, state="deployed")
    # Dropbear keeps answering 2 s after the unlock: both instances see it still "waiting"
    # on the wire, and the store's record of the boot is what keeps them from sending again.
    node.boot_delay = 2.0
    instances = [make_unlockd(first, tmp_path / "a", node, holder="a"),
                 make_unlockd(second, tmp_path / "b", node, holder="b")]
    for boot in range(2):  # the first boot, then a reboot behind everybody's back
        if boot == 0:
            node.wait_in_initramfs()
        else:
            node.reboot()
        stop = threading.Event()
        threads = [threading.Thread(target=instance.run, args=(stop,), daemon=True)
                   for instance in instances]
        for thread in threads:
            thread.start()
        try:
            assert node.booted.wait(30), node.dropbear.log()
            time.sleep(1.0)  # both keep probing a while: neither sends again
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
            for instance in instances:
                instance.finish(30)
        assert node.dropbear.deliveries() == ["ok"] * (boot + 1)
    holders = {step.detail for step in first.steps(NODE) if step.step == "unlockd unlock"}
    assert len(holders) >= 1
    assert len(boots.unlock_history(first, NODE)) == 2


def _unlocker_setup(tmp_path: Path, etcd_server: EtcdServer) -> tuple[
        StateStore, Keystore, Path, str, str, StateConfig]:
    """A fleet on etcd whose controller keystore holds n1's passphrase, one unlocker granted
    ("u1", its identity file returned), and the policy published for unlockers."""
    prefix = f"test/{os.urandom(6).hex()}"
    store = open_store(tmp_path, etcd_server.config(prefix))
    keystore = fleet_keystore(tmp_path, store, tmp_path / "age.key")
    keystore.create(NODE)
    key = generate_ed25519("unlocker@u1")
    identity = tmp_path / "u1.key"
    identity.write_text(key.private_openssh)
    identity.chmod(0o600)
    grant(store, keystore, "u1", key.public_line)
    publish_config(store, FleetUnlockPolicy(), {NODE: "fsn"}, [])
    url = f"etcd://127.0.0.1:{etcd_server.client_port}/{prefix}"
    return store, keystore, identity, key.public_line, url, etcd_server.config(prefix)


def _unlocker_node(tmp_path: Path, store: StateStore, keystore: Keystore,
                   public: str) -> Node:
    sshd = Sshd(tmp_path / "sshd")
    sshd.stop()
    made = Node(make_dropbear(tmp_path / "dropbear", keystore.get(NODE)), sshd)
    made.dropbear.authorize(public)
    record_node(store, made, state="deployed")
    return made


def _clonefleet(*args: str) -> list[str]:
    return [sys.executable, "-m", "clonefleet", *args]


def test_unlocker_with_only_its_identity_unlocks_and_after_revoke_cannot(
        tmp_path: Path, etcd_server: EtcdServer) -> None:
    store, keystore, identity, public, url, _ = _unlocker_setup(tmp_path, etcd_server)
    node = _unlocker_node(tmp_path, store, keystore, public)
    # No fleet file, no keystore identity, no provider credentials: HOME is empty.
    home = tmp_path / "unlocker-home"
    home.mkdir()
    environment = {"PATH": os.environ["PATH"], "HOME": str(home)}
    command = _clonefleet("unlockd", "--once", "--state", url, "--identity", str(identity),
                          "--work-dir", str(home / "work"), "--name", "u1",
                          "--lease-ttl", "6", "--confirm-timeout", "20")
    try:
        node.wait_in_initramfs()
        done = subprocess.run(command, capture_output=True, text=True, timeout=60,
                              env=environment, check=False)
        assert done.returncode == 0, done.stderr
        assert "unlocked" in done.stdout, done.stdout + done.stderr
        assert node.dropbear.deliveries() == ["ok"]
        revoke(store, keystore, "u1")
        node.reboot()
        refused = subprocess.run(command, capture_output=True, text=True, timeout=60,
                                 env=environment, check=False)
        assert refused.returncode == 31, refused.stderr  # the only node watched failed
        assert node.dropbear.deliveries() == ["ok"]  # nothing sent this time
        lines = [line for line in refused.stderr.splitlines() if "cannot decrypt" in line]
        assert len(lines) == 1, refused.stderr
        assert "n1's passphrase: not granted, or revoked" in lines[0]
    finally:
        node.close()


def test_killed_lease_holder_hands_the_boot_to_the_other_within_the_lease_time(
        tmp_path: Path, etcd_server: EtcdServer) -> None:
    store, keystore, identity, public, url, config = _unlocker_setup(tmp_path, etcd_server)
    node = _unlocker_node(tmp_path, store, keystore, public)
    lease_ttl = 5.0
    holder_a = subprocess.Popen(
        _clonefleet("unlockd", "--state", url, "--identity", str(identity), "--work-dir",
                    str(tmp_path / "work-a"), "--name", "a", "--interval", "1",
                    "--lease-ttl", str(lease_ttl), "--confirm-timeout", "20"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HOME": str(tmp_path)})
    stop = threading.Event()
    other: threading.Thread | None = None
    try:
        node.dropbear.hang_once()  # a's attempt stalls inside cryptroot-unlock
        node.wait_in_initramfs()
        deadline = time.monotonic() + 30
        lease = None
        while time.monotonic() < deadline:
            boot = boots.current_boot(store, NODE)
            if boot is not None and boot.marker:
                lease = store.lease(boots.lease_name(NODE, boot.marker))
                if lease is not None and lease.holder == "a":
                    break
            time.sleep(0.05)
        assert lease is not None and lease.holder == "a"
        hang_flag = node.dropbear.folder / "expected.hang_once"
        while hang_flag.exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # a's cryptroot-unlock has started: a is mid-unlock
        assert not hang_flag.exists()
        holder_a.send_signal(signal.SIGKILL)
        holder_a.wait(10)
        killed_at = time.monotonic()
        service_b = unlocker_unlockd(open_store(tmp_path, config), identity, tmp_path / "work-b",
                                     Settings(holder="b", interval=0.5, probe_timeout=2.0,
                                              lease_ttl=lease_ttl, confirm_timeout=20.0),
                                     lambda _: None)
        other = threading.Thread(target=lambda: (service_b.run(stop), service_b.finish(30)),
                                 daemon=True)
        other.start()
        while "ok" not in node.dropbear.deliveries() \
                and time.monotonic() < killed_at + lease_ttl + 15:
            time.sleep(0.05)
        took = time.monotonic() - killed_at
        # The lease outlives its holder by at most its TTL; then one probe and one unlock.
        assert took <= lease_ttl + 4, (took, node.dropbear.log())
        assert node.booted.wait(15)
        assert node.dropbear.deliveries().count("ok") == 1
        unlocked = [step for step in store.steps(NODE) if step.step == "unlockd unlock"]
        assert [step.status for step in unlocked] == ["done"]
        boot = boots.current_boot(store, NODE)
        assert boot is not None and boot.unlocked_by == "b"
    finally:
        stop.set()
        if other is not None:
            other.join(30)
        if holder_a.poll() is None:
            holder_a.kill()
            holder_a.wait(10)
        node.close()


def test_unlockd_stops_cleanly_on_sigterm(tmp_path: Path, etcd_server: EtcdServer) -> None:
    _, _, identity, _, url, _ = _unlocker_setup(tmp_path, etcd_server)
    process = subprocess.Popen(
        _clonefleet("unlockd", "--state", url, "--identity", str(identity), "--work-dir",
                    str(tmp_path / "work"), "--interval", "60"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HOME": str(tmp_path)})
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
        assert "watching every 60 s" in first, first
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert time.monotonic() - started < 5  # not the rest of the 60 s interval
        assert "stopped" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def controller_fleet(ssh_key: Path) -> str:
    return fleet_toml("unlockdtest", "unlockd.clonefleet.test", [replace(FSN, min_active=0)],
                      [FleetNode("n1", "fsn", "S-N1", ipv4="192.0.2.1")],
                      settings={"ssh_key": str(ssh_key)})


def test_controller_drains_an_unexpected_reboot_and_keeps_it_out_while_unhealthy(
        tmp_path: Path, node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller's instance, built from the fleet file: keystore passphrase, operator
    key, drain through the DNS map, and the health check over sshd before undrain. This
    machine's sshd stands in for the booted node, and this machine is no systemd node
    (`systemctl is-system-running` says offline): the check fails, so the node stays out."""
    operator = node.dropbear.operator_key
    operator.with_name(operator.name + ".pub").write_text(
        subprocess.run(["ssh-keygen", "-y", "-f", str(operator)], capture_output=True,
                       text=True, check=True).stdout)
    with (tmp_path / "sshd" / "authorized_keys").open("a") as handle:
        handle.write(operator.with_name(operator.name + ".pub").read_text())
    fleet_path = tmp_path / "fleet.toml"
    fleet_path.write_text(controller_fleet(operator))
    fleet = load_fleet(fleet_path)
    monkeypatch.setenv("CLONEFLEET_AGE_KEY", str(tmp_path / "age.key"))
    state_dir = tmp_path / "state" / "unlockdtest"
    store = open_store(state_dir)
    record_node(store, node)
    passphrase = fleet_keystore(state_dir, store).create(NODE)
    (node.dropbear.folder / "expected").write_text(passphrase)
    service = controller_unlockd(fleet, store, state_dir,
                                 Settings(holder="controller", probe_timeout=2.0,
                                          lease_ttl=6.0, confirm_timeout=20.0),
                                 lambda _: None)
    node.wait_in_initramfs()
    [outcome] = service.run_once()
    assert outcome.action == "unlocked", outcome
    assert node.dropbear.deliveries() == ["ok"]
    record = store.get(NODE)
    assert record is not None and record.state == "draining"
    service.finish(60)  # sshd confirmed, then the health check, then undrain (refused)
    [again] = service.run_once()
    assert again.live == "sshd"
    service.finish(60)
    [health] = store.health(NODE)
    assert health.source == "unlockd" and not health.ok
    assert "offline" in health.detail
    record = store.get(NODE)
    assert record is not None and record.state == "draining"


class NoProvider:
    """Stands in for the provider (none can run here): `clonefleet unlock` asks it only to
    wait for the port, which is up already."""

    boot_timeout = 30.0

    def wait_ready(self, access: object, node: object, timeout: float, what: str) -> None:
        pass


def test_manual_unlock_records_the_boot_so_unlockd_sends_nothing_more(
        tmp_path: Path, node: Node) -> None:
    from clonefleet.provision import Provisioner

    operator = node.dropbear.operator_key
    operator.with_name(operator.name + ".pub").write_text(
        subprocess.run(["ssh-keygen", "-y", "-f", str(operator)], capture_output=True,
                       text=True, check=True).stdout)
    fleet_path = tmp_path / "fleet.toml"
    fleet_path.write_text(controller_fleet(operator))
    state_dir = tmp_path / "state"
    store = open_store(state_dir)
    record_node(store, node, state="deployed")
    keystore = Keystore(state_dir / "keystore", tmp_path / "age.key")
    (node.dropbear.folder / "expected").write_text(keystore.create(NODE))
    node.boot_delay = 3.0  # Dropbear still answers after the operator's unlock
    service = make_unlockd(store, tmp_path / "a", node, policy=UnlockPolicy("approve"))
    node.wait_in_initramfs()
    assert service.run_once()[0].action == "waiting"
    provisioner = Provisioner(load_fleet(fleet_path), store, state_dir,
                              NoProvider(), keystore, log=lambda _: None)  # type: ignore[arg-type]
    # A reboot announced before (a rollout's, a `power reset`): this unlock spends it.
    boots.expect_reboot(store, NODE, by="clonefleet update", at=time.time() - 60)
    provisioner.unlock(NODE, wait_for_sshd=False, timeout=30)
    assert store.get_fact(NODE, boots.EXPECTED_REBOOT) is None
    boots.approve(store, NODE, by="operator")  # even approved: the boot is done
    [outcome] = service.run_once()
    assert outcome.action == "none" and "unlocked already" in outcome.detail
    assert node.dropbear.deliveries() == ["ok"]
