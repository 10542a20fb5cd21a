"""`clonefleet update` rolling real upgrades over real nodes, DNS servers and alerts.

Each node is a real OpenSSH server on loopback whose sessions are chrooted into its own
overlay of a Debian 12 root (tests/apt_repo_fixture.py), using a signed apt repository on
loopback whose security suite upgrades `cf-tool` (pulling in the new `libcf1`) and publishes
`cf-broken`, whose postinst fails. Each node has its own real PowerDNS server (the DNS map is
published to all three); alerts go to a local webhook (apprise `json://`). The fleet: fsn-1
and fsn-2 in region fsn (min_active 1), ash-1 in region ash.

What a chroot cannot have is stood in for, and only that: there is no systemd in a chroot,
so each node has a `systemctl` that answers as a booted system with no failed unit (the
health check's probe asks systemd). The rollouts here need no reboot (none of these packages
asks for one): the reboot → Dropbear unlock → sshd path runs on lab VMs only.

Throughout each rollout a thread asks every PowerDNS server for the routed name and records,
per region, how many of its nodes are in the answer: no region may ever be below its minimum.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from apt_repo_fixture import (  # noqa: F401  (fixtures)
    AptRepo,
    Package,
    chroot,
    debian_root,
    point_root_at,
    sshd_chroot_folder,
)
from dns_watch import DnsWatch
from etcd_fixture import EtcdServer
from fleet_text import ASH, FSN, FleetNode, fleet_toml
from pdns_fixture import PowerDnsServer, ServerFactory
from sshd_fixture import Sshd
from webhook_fixture import Webhook

from clonefleet import nodefacts
from clonefleet.dnsmap import ENDPOINT_FACT, build_geoip_database, drain_node, publish
from clonefleet.dnsmap.powerdns import ask
from clonefleet.dnsmap.verify import ANYWHERE
from clonefleet.image.chroot import mounted, overlay
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.lab.qemu import free_port
from clonefleet.rollout import lock
from clonefleet.rollout.overhead import orchestration_overhead
from clonefleet.rollout.plan import make_plan
from clonefleet.rollout.progress import (
    PROGRESS_FACT,
    STEPS,
    Progress,
    RunOptions,
    last_run,
)
from clonefleet.rollout.report import RolloutStopped
from clonefleet.rollout.run import Event, Rollout
from clonefleet.ssh import generate_ed25519
from clonefleet.state import FLEET_FACTS, StateStore, open_store
from clonefleet.unlockers import fleet_keystore

pytestmark = pytest.mark.integration


# Ashburn on a Hetzner Cloud project (`cloud=True`): its node's reboot is then waited for
# the way a real server's is, by SSH banner at its Dropbear address (the lab provider would
# fail at once, finding no VM). No API call is made on that path until a node stays silent
# past the boot time: then its one power reset asks for the token, which is never set.
CLOUD_PROVIDER = """
[providers.cloud]
driver = "hetzner-cloud"
token_env = "CLONEFLEET_TEST_UNSET_HCLOUD_TOKEN"
"""


def fleet_text(ssh_key: Path, alert_url: str, cloud: bool = False, state: str = "") -> str:
    """fsn-1 and fsn-2 in fsn (min_active 1), ash-1 in ash; one routed name with a TTL of 1 s
    and a grace of 1 s, so that drains settle quickly. `state`: `[fleet] state` (empty: the
    SQLite default)."""
    ash = replace(ASH, min_active=0, provider="cloud" if cloud else ASH.provider)
    return fleet_toml(
        "rollrun", "rollrun.clonefleet.test",
        [replace(FSN, min_active=1), ash],
        [FleetNode("fsn-1", "fsn", "RR-FSN1", ipv4="192.0.2.11"),
         FleetNode("fsn-2", "fsn", "RR-FSN2", ipv4="192.0.2.12"),
         FleetNode("ash-1", "ash", "RR-ASH1", ipv4="198.51.100.21")],
        settings={"ssh_key": str(ssh_key), "min_active_total": 1, "dns_grace_seconds": 1,
                  "alert_urls": [alert_url], **({"state": state} if state else {})},
        routed=[{"name": "edge", "ttl": 1}]) + (CLOUD_PROVIDER if cloud else "")


EDGE = "edge.rollrun.clonefleet.test."
BASE = (Package("cf-tool", "1.0"), Package("cf-extra", "1.0"))
BROKEN_OLD = Package("cf-broken", "1.0")
SECURITY = (
    Package("cf-tool", "1.1", depends="libcf1 (>= 1.1)"),
    Package("libcf1", "1.1"),
    Package("cf-broken", "1.1",
            postinst="echo 'cf-broken: cannot migrate its data' >&2\nexit 1\n"),
    # Upgraded only where the old one is installed: a "kernel" asking for a reboot.
    Package("linux-image-cftest", "2.0",
            postinst="touch /var/run/reboot-required\n"
                     "echo linux-image-cftest >> /var/run/reboot-required.pkgs\n"),
)
KERNEL_OLD = Package("linux-image-cftest", "1.0")
UPDATES = (Package("cf-extra", "1.1"),)
# No systemd in a chroot: the health check's probe gets the answers of a booted system, and
# a reboot takes the node's sshd down for good (a server that never comes back).
SYSTEMCTL = """#!/bin/sh
case "$1" in
    is-system-running) echo running ;;
    reboot) kill "$(cat /run/cftest-sshd.pid)" ;;
esac
exit 0
"""
RUN_TIMEOUT = 600
ROOT = Path(__file__).resolve().parent.parent.parent
BOOT_TIMEOUT = 8.0


@pytest.fixture(scope="module")
def rollout_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AptRepo]:
    repo = AptRepo(tmp_path_factory.mktemp("rollout-repo"),
                   {"bookworm-security": SECURITY, "bookworm-updates": UPDATES})
    repo.start()
    try:
        yield repo
    finally:
        repo.stop()


@dataclass
class RollFleet:
    fleet: Fleet
    store: StateStore
    roots: dict[str, Path]
    servers: list[PowerDnsServer]
    webhook: Webhook
    state_dir: Path

    def watch(self) -> DnsWatch:
        return DnsWatch(self.fleet, {server.name: server.endpoint for server in self.servers},
                        EDGE).start()

    def installed(self, node: str, package: str) -> str:
        return chroot(self.roots[node], "dpkg-query", "-W", "-f", "${Version}", package)

    def progress(self, node: str) -> Progress | None:
        return Progress.from_fact(self.store.get_fact(node, PROGRESS_FACT))

    def cli(self, *arguments: str,
            timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "clonefleet", "--fleet",
                               str(self.fleet.path), *arguments], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _make_fleet(base: Path, repo: AptRepo, tmp_path: Path, pdns_factory: ServerFactory,
                monkeypatch: pytest.MonkeyPatch,
                installed: dict[str, tuple[Package, ...]],
                cloud: bool = False, state: str = "") -> Iterator[RollFleet]:
    monkeypatch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "state"))
    webhook = Webhook()
    with ExitStack() as stack, sshd_chroot_folder() as folder:
        stack.callback(webhook.stop)
        roots: dict[str, Path] = {}
        sshds: dict[str, Sshd] = {}
        for name, packages in installed.items():
            merged, _ = stack.enter_context(overlay(base, folder / name))
            stack.enter_context(mounted(merged))
            point_root_at(merged, repo, packages)
            shim = merged / "usr" / "local" / "bin" / "systemctl"
            shim.write_text(SYSTEMCTL)
            shim.chmod(0o755)
            sshd = Sshd(folder / f"sshd-{name}", extra_config=f"ChrootDirectory {merged}\n")
            stack.callback(sshd.stop)
            (merged / "run" / "cftest-sshd.pid").write_text(str(sshd.process.pid))
            roots[name], sshds[name] = merged, sshd
        first = sshds["fsn-1"]
        for sshd in sshds.values():
            (sshd.client_key.parent / "authorized_keys").write_text(
                (first.client_key.parent / "authorized_keys").read_text())
        key = first.client_key
        key.with_name(key.name + ".pub").write_text(
            (key.parent / "authorized_keys").read_text())
        path = tmp_path / "inventory" / "rollrun.toml"
        path.parent.mkdir()
        path.write_text(fleet_text(key, webhook.url, cloud, state))
        fleet = load_fleet(path)
        state_dir = tmp_path / "state" / "rollrun"
        store = open_store(state_dir, fleet.state)
        geoip = build_geoip_database(fleet, tmp_path / "geo.mmdb")
        names = sorted(fleet.nodes)
        servers = pdns_factory(len(names), [geoip], names)
        for name, server in zip(names, servers, strict=True):
            store.set_state(name, "active", actor="test", reason="deployed in the test")
            store.set_fact(name, "ssh", {"host": "127.0.0.1", "port": sshds[name].port})
            store.set_fact(name, "ssh_host_key", sshds[name].host_key)
            store.set_fact(name, ENDPOINT_FACT, server.endpoint.as_fact())
        published = publish(fleet, store, actor="test")
        assert published.ok and sorted(published.pushed) == names, published.unreachable
        yield RollFleet(fleet, store, roots, servers, webhook, state_dir)
        store.close()


@pytest.fixture
def roll_fleet(debian_root: Path, rollout_repo: AptRepo, tmp_path: Path,  # noqa: F811
               pdns_factory: ServerFactory,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[RollFleet]:
    yield from _make_fleet(debian_root, rollout_repo, tmp_path, pdns_factory, monkeypatch,
                           {"fsn-1": BASE, "fsn-2": BASE, "ash-1": BASE})


@pytest.fixture
def etcd_fleet(debian_root: Path, rollout_repo: AptRepo, tmp_path: Path,  # noqa: F811
               pdns_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch,
               etcd_server: EtcdServer) -> Iterator[RollFleet]:
    """The same fleet with its state on a real etcd (as the lab fleet's is)."""
    yield from _make_fleet(debian_root, rollout_repo, tmp_path, pdns_factory, monkeypatch,
                           {"fsn-1": BASE, "fsn-2": BASE, "ash-1": BASE},
                           state=f"etcd://127.0.0.1:{etcd_server.client_port}/rollrun-"
                                 f"{tmp_path.name}")


@pytest.fixture
def broken_fleet(debian_root: Path, rollout_repo: AptRepo, tmp_path: Path,  # noqa: F811
                 pdns_factory: ServerFactory,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[RollFleet]:
    yield from _make_fleet(debian_root, rollout_repo, tmp_path, pdns_factory, monkeypatch,
                           {"fsn-1": BASE, "fsn-2": BASE, "ash-1": (*BASE, BROKEN_OLD)})


@pytest.fixture
def kernel_fleet(debian_root: Path, rollout_repo: AptRepo, tmp_path: Path,  # noqa: F811
                 pdns_factory: ServerFactory,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[RollFleet]:
    """ash-1 (on the cloud provider) has the old "kernel": its update needs a reboot."""
    monkeypatch.setenv("CLONEFLEET_AGE_KEY", str(tmp_path / "age.key"))
    yield from _make_fleet(debian_root, rollout_repo, tmp_path, pdns_factory, monkeypatch,
                           {"fsn-1": BASE, "fsn-2": BASE, "ash-1": (*BASE, KERNEL_OLD)},
                           cloud=True)


def _assert_updated(roll: RollFleet, node: str) -> None:
    assert roll.store.get(node).state == "active"  # type: ignore[union-attr]
    assert roll.installed(node, "cf-tool") == "1.1"
    assert roll.installed(node, "libcf1") == "1.1"
    assert roll.installed(node, "cf-extra") == "1.0"  # not a security update
    progress = roll.progress(node)
    assert progress is not None and progress.done == STEPS and progress.result == "done"


def test_restart_only_rollout_updates_every_node_and_keeps_every_region_at_its_minimum(
        roll_fleet: RollFleet) -> None:
    fleet, store = roll_fleet.fleet, roll_fleet.store
    events: list[Event] = []
    rollout = Rollout(fleet, store, roll_fleet.state_dir, sink=events.append, poll_seconds=0.5)
    watch = roll_fleet.watch()
    try:
        report = rollout.start(lambda: make_plan(fleet, store), RunOptions())
    finally:
        watch.stop()
    watch.check_minimums()
    assert watch.absent == set(fleet.nodes)  # every node did leave the answers once
    assert report.status == "done" and report.exit_code == 0
    assert report.batches == (("fsn-1",), ("ash-1",), ("fsn-2",))
    for node in report.nodes:
        assert node.result == "done"
        assert sorted(node.packages) == ["cf-tool 1.0 → 1.1", "libcf1 (new) → 1.1"]
        assert node.rebooted is False
        assert node.out_of_dns_seconds is not None and node.out_of_dns_seconds >= 2  # TTL+grace
        _assert_updated(roll_fleet, node.node)
    steps = [(step.step, step.status) for step in store.steps("fsn-1")]
    assert steps == [(f"update: {step}", "done") for step in STEPS]
    reboot = next(step for step in store.steps("fsn-1") if step.step == "update: reboot")
    assert reboot.detail.startswith("not needed")
    assert [entry.to_state for entry in store.history("ash-1")][-5:] == [
        "draining", "drained", "updating", "drained", "active"]
    batches = [event.nodes for event in events if event.kind == "batch"]
    assert batches == [("fsn-1",), ("ash-1",), ("fsn-2",)]
    assert roll_fleet.webhook.received == []
    assert lock.current_owner(store) == (None, False)
    # The overhead read back from what the run recorded: the same batches, and the bench's
    # --from-fleet prints it from the store.
    run, progress = last_run(store, fleet.nodes)
    assert run is not None and sorted(progress) == sorted(fleet.nodes)
    read_back = orchestration_overhead(run.started_at, progress)
    assert read_back.batches == report.batches and read_back.ratio > 1, read_back
    bench = subprocess.run([sys.executable, str(ROOT / "bench" / "rollout.py"), "--from-fleet",
                            str(fleet.path)], capture_output=True, text=True, timeout=120)
    assert bench.returncode == 0, bench.stderr
    assert "batches fsn-1 → ash-1 → fsn-2" in bench.stdout, bench.stdout
    assert f"overhead ratio {read_back.ratio:.2f}" in bench.stdout, bench.stdout
    # Nothing left to do: a second rollout updates nothing and drains nothing.
    again = rollout.start(lambda: make_plan(fleet, store), RunOptions())
    assert again.batches == () and {node.result for node in again.nodes} == {"skipped"}


def test_two_nodes_of_a_batch_update_at_once_on_a_shared_etcd_store(
        etcd_fleet: RollFleet) -> None:
    # Two nodes drained, settled and moved on at once, their threads sharing one etcd store:
    # one node's blocks (drain, settle) read every node while the other's thread writes its
    # own moves. The lab fleet's rollout once failed a node there ("another process changed
    # the state...": a single write landed between a block's reads and its commit). That
    # interleaving is a matter of milliseconds and this rollout does not force it;
    # tests/unit/test_state.py does, on both backends.
    fleet, store = etcd_fleet.fleet, etcd_fleet.store
    rollout = Rollout(fleet, store, etcd_fleet.state_dir, poll_seconds=0.2)
    watch = etcd_fleet.watch()
    try:
        report = rollout.start(lambda: make_plan(fleet, store),
                               RunOptions(batch_size=2, max_unavailable_per_region=1))
    finally:
        watch.stop()
    watch.check_minimums()
    failed = {node.node: node.reason for node in report.nodes if node.result != "done"}
    assert report.status == "done" and not failed, (report.status, failed)
    assert report.batches == (("ash-1", "fsn-1"), ("fsn-2",))
    for node in fleet.nodes:
        _assert_updated(etcd_fleet, node)
    assert lock.current_owner(store) == (None, False)


def test_a_failing_upgrade_leaves_the_node_drained_alerts_and_halts(
        broken_fleet: RollFleet) -> None:
    roll = broken_fleet
    watch = roll.watch()
    try:
        result = roll.cli("--json", "update")
    finally:
        watch.stop()
    watch.check_minimums()
    assert result.returncode == 40, result.stderr
    document = json.loads(result.stdout)
    assert document["status"] == "halted-on-failure"
    nodes = {node["node"]: node for node in document["nodes"]}
    assert nodes["fsn-1"]["result"] == "done"
    assert nodes["ash-1"]["result"] == "failed" and nodes["ash-1"]["failed_step"] == "upgrade"
    assert nodes["ash-1"]["reason"].startswith("apt-get failed (exit 100): ")
    assert "cf-broken" in nodes["ash-1"]["reason"]
    assert nodes["fsn-2"]["result"] == "not started"
    assert "run `clonefleet update --resume`" in result.stderr.splitlines()[-1] or \
        "--resume" in result.stderr
    record = roll.store.get("ash-1")
    assert record is not None and record.state == "drained"
    assert record.reason.startswith("rollout 1: upgrade failed: apt-get failed (exit 100)")
    assert not roll.store.health("ash-1")[0].ok
    # Out of every DNS answer, and a plain undrain refuses it.
    for server in roll.servers:
        answer = ask(server.endpoint, EDGE, "A", client=ANYWHERE)
        assert roll.fleet.nodes["ash-1"].ipv4 not in answer.addresses
    undrain = roll.cli("undrain", "ash-1")
    assert undrain.returncode != 0 and "last health check failed" in undrain.stderr
    titles = roll.webhook.titles()
    assert "[CRITICAL] ash-1: update failed at upgrade" in titles
    assert "[CRITICAL] rollout 1 halted" in titles
    assert roll.installed("fsn-2", "cf-tool") == "1.0"  # the rollout stopped before it


def test_a_node_that_does_not_come_back_from_its_reboot_stays_drained_and_halts(
        kernel_fleet: RollFleet, tmp_path: Path) -> None:
    roll = kernel_fleet
    # ash-1 as provisioned: its passphrase escrowed, its Dropbear pinned at an address where
    # nothing will answer after the reboot (its sshd dies with the reboot and nothing
    # comes back).
    fleet_keystore(roll.state_dir, roll.store).create("ash-1")
    roll.store.set_fact("ash-1", nodefacts.UNLOCK_ACCESS, {"host": "127.0.0.1",
                                                           "port": free_port()})
    roll.store.set_fact("ash-1", nodefacts.DROPBEAR_HOST_KEY, generate_ed25519().public_line)
    events: list[Event] = []
    rollout = Rollout(roll.fleet, roll.store, roll.state_dir, sink=events.append,
                      poll_seconds=0.5, boot_timeout=BOOT_TIMEOUT)
    watch = roll.watch()
    started = time.monotonic()
    try:
        with pytest.raises(RolloutStopped) as stopped:
            rollout.start(lambda: make_plan(roll.fleet, roll.store), RunOptions())
    finally:
        watch.stop()
    elapsed = time.monotonic() - started
    watch.check_minimums()
    report = stopped.value.report
    assert report.status == "halted-on-failure" and report.exit_code == 40
    nodes = {node.node: node for node in report.nodes}
    assert nodes["fsn-1"].result == "done" and nodes["fsn-1"].rebooted is False
    ash = nodes["ash-1"]
    assert ash.result == "failed" and ash.failed_step == "reboot", ash
    assert "Dropbear in the initramfs" in ash.reason and f"{BOOT_TIMEOUT:g}" in ash.reason, \
        ash.reason
    # Silent past the boot time, it was to be power-reset through its provider: here the
    # provider cannot be asked (no token), so the reason says that too.
    assert "power reset through cloud failed: " in ash.reason and \
        "CLONEFLEET_TEST_UNSET_HCLOUD_TOKEN" in ash.reason, ash.reason
    assert nodes["fsn-2"].result == "not started"
    # Bounded by the boot timeout, not by the provider's default (20 minutes).
    assert elapsed < 300, elapsed
    # Nothing lost: the upgrade that needed the reboot is recorded, the reboot was announced,
    # and the node stays out of DNS with the reason until someone looks at it.
    assert sorted(ash.packages) == ["cf-tool 1.0 → 1.1", "libcf1 (new) → 1.1",
                                    "linux-image-cftest 1.0 → 2.0"]
    assert roll.installed("ash-1", "linux-image-cftest") == "2.0"
    progress = roll.progress("ash-1")
    assert progress is not None and progress.reboot_reasons, progress
    record = roll.store.get("ash-1")
    assert record is not None and record.state == "drained"
    assert record.reason.startswith("rollout 1: reboot failed: "), record.reason
    assert not roll.store.health("ash-1")[0].ok
    for server in roll.servers:
        answer = ask(server.endpoint, EDGE, "A", client=ANYWHERE)
        assert roll.fleet.nodes["ash-1"].ipv4 not in answer.addresses
    assert "[CRITICAL] ash-1: update failed at reboot" in roll.webhook.titles()
    assert roll.installed("fsn-2", "cf-tool") == "1.0"
    assert lock.current_owner(roll.store) == (None, False)


def test_a_killed_rollout_is_resumed_with_nothing_lost_and_a_second_one_is_refused(
        roll_fleet: RollFleet) -> None:
    roll = roll_fleet
    watch = roll.watch()
    first = subprocess.Popen([sys.executable, "-m", "clonefleet", "--fleet",
                              str(roll.fleet.path), "update"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:  # wait until fsn-1 is out of DNS: mid-batch
            record = roll.store.get("fsn-1")
            if record is not None and record.state in ("draining", "drained", "updating"):
                break
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = roll.cli("update", timeout=120)
        assert second.returncode == 3
        assert "the rollout lock is held by " in second.stderr
        assert f"(pid {first.pid})" in second.stderr
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        killed_in = roll.store.get("fsn-1")
        assert killed_in is not None and killed_in.state in ("draining", "drained", "updating")
        assert killed_in.reason.startswith("rollout 1: ")  # never out without a reason
        # The killed holder's lease runs out; its record stays: a stale lock.
        deadline = time.monotonic() + lock.DEFAULT_TTL + 10
        while roll.store.lease(lock.LEASE) is not None:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        stale = roll.cli("update", "--resume", timeout=120)
        assert stale.returncode == 3 and "--take-over-lock" in stale.stderr
        fresh = roll.cli("update", timeout=120)
        assert fresh.returncode == 3  # still the stale lock first
        resumed = roll.cli("--json", "update", "--resume", "--take-over-lock")
    finally:
        watch.stop()
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
    watch.check_minimums()
    assert resumed.returncode == 0, resumed.stderr
    document = json.loads(resumed.stdout)
    assert document["run"] == 1 and document["status"] == "done"
    assert document["batches"][0] == ["fsn-1"]  # the node left out of DNS first
    assert {node["node"]: node["result"] for node in document["nodes"]} == {
        "fsn-1": "done", "ash-1": "done", "fsn-2": "done"}
    for node in roll.fleet.nodes:
        _assert_updated(roll, node)
    assert "resuming rollout 1" in resumed.stderr
    takeover = [step for step in roll.store.steps(FLEET_FACTS)
                if step.step == lock.TAKEOVER_STEP]
    assert len(takeover) == 1 and f"(pid {first.pid})" in takeover[0].detail
    # Finished: a new rollout may start (and finds nothing to do).
    again = roll.cli("--json", "update")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["batches"] == []


def test_a_drain_by_smartwatch_mid_rollout_makes_the_rollout_wait_for_the_region(
        roll_fleet: RollFleet) -> None:
    roll = roll_fleet
    fleet, store = roll.fleet, roll.store
    events: list[Event] = []
    undrained = threading.Event()

    def operator_undrains() -> None:
        time.sleep(1.5)
        from clonefleet.dnsmap import undrain_node

        undrain_node(fleet, store, "fsn-1", actor="operator", reason="disk checked, fine")
        undrained.set()

    def sink(event: Event) -> None:
        events.append(event)
        if event.kind == "step" and event.node == "ash-1" and event.step == "upgrade" \
                and event.status == "start":
            # smartwatch's drain request, as `clonefleet serve` carries it out.
            drain_node(fleet, store, "fsn-1", actor="smartwatch",
                       reason="/dev/sda: reallocated sectors growing")
        if event.kind == "waiting":
            threading.Thread(target=operator_undrains, daemon=True).start()

    rollout = Rollout(fleet, store, roll.state_dir, sink=sink, poll_seconds=0.3)
    watch = roll.watch()
    try:
        report = rollout.start(lambda: make_plan(fleet, store), RunOptions(wait_seconds=120))
    finally:
        watch.stop()
    watch.check_minimums()
    waits = [event for event in events if event.kind == "waiting"]
    assert len(waits) == 1
    assert "region fsn has 1 active node(s) and min_active 1" in waits[0].detail
    assert "fsn-1 draining (smartwatch: /dev/sda: reallocated sectors growing)" in \
        waits[0].detail or "fsn-1 drained (smartwatch" in waits[0].detail
    assert undrained.is_set()
    # fsn-2 went only after fsn-1 was back.
    assert report.batches == (("fsn-1",), ("ash-1",), ("fsn-2",))
    fsn2_drain = next(entry for entry in store.history("fsn-2") if entry.to_state == "draining")
    fsn1_back = [entry for entry in store.history("fsn-1")
                 if entry.to_state == "active" and entry.actor == "operator"]
    assert fsn1_back and fsn2_drain.at > fsn1_back[-1].at
    assert report.status == "done"
    for node in fleet.nodes:
        _assert_updated(roll, node)


def test_ctrl_c_finishes_the_step_under_way_releases_the_lock_and_resume_finishes(
        roll_fleet: RollFleet) -> None:
    roll = roll_fleet
    first = subprocess.Popen([sys.executable, "-m", "clonefleet", "--fleet",
                              str(roll.fleet.path), "update"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            record = roll.store.get("fsn-1")
            if record is not None and record.state in ("draining", "drained", "updating"):
                break
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
    assert first.returncode == 42, err
    assert err.strip().splitlines()[-1].endswith(
        "run `clonefleet update --resume` to continue where it stopped")
    assert "fsn-1" in out and "stopped" in out  # the report
    assert lock.current_owner(roll.store) == (None, False)  # released, not stale
    progress = roll.progress("fsn-1")
    assert progress is not None and progress.current == "" and progress.done  # step finished
    record = roll.store.get("fsn-1")
    assert record is not None and record.state != "active"
    assert record.reason.startswith("rollout 1: ")
    assert roll.progress("fsn-2") is None  # never started
    resumed = roll.cli("update", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    for node in roll.fleet.nodes:
        _assert_updated(roll, node)
