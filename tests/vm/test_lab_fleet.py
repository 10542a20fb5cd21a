"""The lab fleet end to end, provisioned once per run and shared by every test below (none
needs a fresh install): three VMs in two regions on the lab's LAN, each behind another
provider, so one fleet proves three drivers; its state is on a real etcd (the shared store
the nodes' unlockers need):

- fsn-1 is a Hetzner dedicated server as the `hetzner-robot` driver sees one (the Robot API
  is the local fake): a /32 with an off-link gateway and nothing else (10.0.2.15/32 via
  10.0.2.2 inside qemu's user network), single disk, SeaBIOS; its private address on the
  LAN comes from the fleet file, as a vSwitch's would;
- fsn-2 is a lab VM (the `lab` driver) with two disks booting OVMF: RAID1 under LUKS, an ESP
  with GRUB on each disk;
- ash-1 is a Hetzner Cloud server (the `hetzner-cloud` driver against the local hcloud fake,
  which creates it), DHCP, its private address from the fleet file as a Cloud network's.

In order: the plan of a dry run; the three provisioned at once as full clones with one
command; a node coming up with a failed unit is held at its health check; every node's
PowerDNS answers the routed name with the nearest active node (ECS); WireGuard peers
handshake over the LAN, a row written on the primary is read on every replica, node
exporter serves metrics; pebble (the ACME test CA) issues the fleet certificate through
DNS-01 answered by the nodes' own PowerDNS, a deploy distributes it and every node's HAProxy
serves it on 443 (HTTP/2) in front of the app, and the whole node deploy again then changes
nothing; `clonefleet update` rolls a "security update" needing a reboot over the three
(each drained, upgraded, rebooted, unlocked through Dropbear, checked and put back) while a
thread asks every node's PowerDNS that Falkenstein never drops below its minimum; on
request (NODE_UNLOCKERS) fsn-1 and ash-1 become unlockers (one deploy) and, with nothing of
clonefleet running on the controller, unlock fsn-2 after two hard power cycles: one of them
per boot with both up, the other alone once the first is stopped
(tests/vm/unlocker_checks.py), and the controller's unlockd, back, returns the healthy node
to DNS; the mission's loop: fsn-2's
smartwatch is fed a failing NVMe recording, alerts the operators and drains fsn-2 through
`clonefleet serve`, and no node's PowerDNS answers with fsn-2 any more;
fsn-2's LUKS passphrase is rotated, a hard reset (qemu's reset button, what a rollout
does to a node silent after its reboot) is refused by `clonefleet unlock`
while the controller pins another initramfs key and then unlocked with the paper recovery
key; last, because it degrades the mirror, fsn-2's host keys are rotated and it boots from
either disk alone, each boot a hard power cycle handled by `clonefleet unlockd`, the first
presenting the rotated Dropbear key (tests/vm/unlockd_checks.py).

The OVH driver's node, made to fail mid-install, is tests/vm/test_provision_ovh.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from apt_repo_fixture import INSTALLED, OTHER_UPGRADES, SECURITY_UPGRADES, AptRepo, build_deb
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from dns_watch import DnsWatch
from etcd_fixture import EtcdServer, running_etcd
from node_replay import CHECK, install_replay
from pebble_fixture import Pebble, start_pebble
from webhook_fixture import Webhook

from clonefleet.dnsmap import Endpoints
from clonefleet.dnsmap.powerdns import ask
from clonefleet.dnsmap.verify import ANYWHERE
from clonefleet.fakes.serve import DEFAULT_CREDENTIALS
from clonefleet.inventory import load_fleet
from clonefleet.lab import qemu
from clonefleet.lab.qemu import free_port
from clonefleet.rollout.overhead import orchestration_overhead
from clonefleet.rollout.progress import last_run
from clonefleet.ssh import RemoteShell
from clonefleet.state import StateStore

from .conftest import LAB_FLEET, ROOT, Lab, open_lab_behind_fakes
from .raid_checks import (
    check_boots_from_either_disk,
    check_key_rotation,
    check_mirrored_uefi_node,
    check_recovery_key_unlocks_a_boot,
)
from .unlockd_checks import (
    UnlockdProcess,
    UnlockdReboots,
    check_host_key_rotation,
    wait_for,
)
from .unlocker_checks import (
    NodeUnlockers,
    add_unlockers,
    check_unlocker_service,
    set_unlocker,
    unlocker_fingerprints,
)

# Selectable alone with `bash scripts/test -m fleet tests/vm/test_lab_fleet.py`.
pytestmark = [pytest.mark.vm, pytest.mark.fleet]
NODES = ("fsn-1", "fsn-2", "ash-1")
ROBOT_NODE = "fsn-1"
RAID_NODE = "fsn-2"
CLOUD_NODE = "ash-1"
# The nodes that unlock the others (fsn-2 among them) while the controller is down.
UNLOCKERS = (ROBOT_NODE, CLOUD_NODE)
FAILING = "fsn-2"  # its region keeps fsn-1: the drain leaves Falkenstein at its minimum
ROBOT_SERVER = 321
# The provider nodes' addresses on the fleet's private network (the lab's LAN), as a
# vSwitch or a Cloud network gives them; the lab driver seats its own VMs from .11 up.
PRIVATE = {ROBOT_NODE: "10.99.0.101/24", CLOUD_NODE: "10.99.0.102/24"}
CREDENTIALS = {
    "LAB_HCLOUD_TOKEN": DEFAULT_CREDENTIALS["hetzner-cloud"]["token"],
    "HETZNER_ROBOT_USER": DEFAULT_CREDENTIALS["hetzner-robot"]["user"],
    "HETZNER_ROBOT_PASSWORD": DEFAULT_CREDENTIALS["hetzner-robot"]["password"],
}
PROVISION_STEPS = ["create server", "boot rescue", "build node layer", "install",
                   "boot from disk", "unlock", "health check", "deploy"]
EDGE = "edge.lab.clonefleet.test"
PSQL = "runuser -u postgres -- psql -X -A -t -d app -c"
# How long after provisioning the replicas may take to seed themselves (deploys/database.py).
REPLICA_SEED_SECONDS = 180
BOOT_ID = "cat /proc/sys/kernel/random/boot_id"
# Two rounds of reboots (fsn-1 and ash-1 together, then fsn-2), each up to a lab boot
# timeout (20 min) and its unlock: generous, it is a bound, not an expectation.
ROLLOUT_SECONDS = 5400
BATCHING = ("--batch-size", "2", "--max-unavailable-per-region", "1")
# Unlockers on fsn-1 and ash-1 unlocking fsn-2 with the controller down, on request: their
# deploy (three initramfs rebuilds at once) and two more reboots of fsn-2 cost about 25 min
# on two emulating cores, more than the suite's time budget leaves.
NODE_UNLOCKERS = os.environ.get("CLONEFLEET_TEST_NODE_UNLOCKERS") == "1"


@dataclass
class Controller:
    """What the controller side runs for the nodes besides the CLI."""

    webhook: Webhook
    serve_port: int
    pebble: Pebble | None = None
    # Each node's paper recovery key, from the provision report (shown once).
    recovery_keys: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """The fleet's shared state store: a real etcd on the controller's loopback (the nodes'
    unlockers reach it at qemu's 10.0.2.2)."""
    yield from running_etcd(tmp_path_factory)


@pytest.fixture(scope="module")
def controller() -> Iterator[Controller]:
    ours = Controller(Webhook(), free_port())
    try:
        yield ours
    finally:
        if ours.pebble is not None:
            ours.pebble.stop()
        ours.webhook.stop()


def fleet_text(controller: Controller, robot_port: int, cloud_port: int,
               etcd_port: int) -> str:
    """The lab fleet as shipped, with its state on etcd, where the agents send drain
    requests and alerts (the controller as a guest sees it: qemu's 10.0.2.2 is this
    machine's loopback), fsn-1 a Robot server and ash-1 a Cloud server, both with their
    private addresses."""
    text = LAB_FLEET.read_text()
    replacements = [
        ("[fleet]\n", f'[fleet]\nstate = "etcd://127.0.0.1:{etcd_port}"\n'
                      f'control_url = "http://10.0.2.2:{controller.serve_port}"\n'
                      f'alert_urls = ["{guest_alert_url(controller)}"]\n'),
        ("[regions.fsn]\n", f"""[providers.robot]
driver = "hetzner-robot"
api_url = "http://127.0.0.1:{robot_port}"
lab_routes = true

[providers.cloud]
driver = "hetzner-cloud"
api_url = "http://127.0.0.1:{cloud_port}/v1"
token_env = "LAB_HCLOUD_TOKEN"
location = "ash"
# Hetzner sells its cx types in Europe only (the fake refuses them in Ashburn as the API does).
server_type = "cpx21"
lab_routes = true

[regions.fsn]
"""),
        (f'[nodes.{ROBOT_NODE}]\nregion = "fsn"\n',
         f'[nodes.{ROBOT_NODE}]\nregion = "fsn"\nprovider = "robot"\n'
         f'robot_server = {ROBOT_SERVER}\nprivate_address = "{PRIVATE[ROBOT_NODE]}"\n'),
        # Hetzner's dedicated-server network, as qemu's user network can carry it.
        (f"[nodes.{RAID_NODE}]\n", f'[nodes.{ROBOT_NODE}.network]\naddress = "10.0.2.15"\n'
                                   f'prefix = 32\ngateway = "10.0.2.2"\n\n[nodes.{RAID_NODE}]\n'),
        (f'[nodes.{CLOUD_NODE}]\nregion = "ash"\n',
         f'[nodes.{CLOUD_NODE}]\nregion = "ash"\nprovider = "cloud"\n'
         f'private_address = "{PRIVATE[CLOUD_NODE]}"\n'),
    ]
    for old, new in replacements:
        assert text.count(old) == 1, f"inventory/lab.toml changed: {old!r}"
        text = text.replace(old, new)
    return text + '\n[unlock]\nunexpected = "immediate"\n'


def guest_alert_url(controller: Controller) -> str:
    return f"json://10.0.2.2:{controller.webhook.port}/"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, controller: Controller,
        etcd: EtcdServer) -> Iterator[Lab]:
    def fleet(state_root: Path) -> tuple[Path, Path]:
        path = state_root / "lab.toml"
        path.write_text(fleet_text(controller, free_port(), free_port(), etcd.client_port))
        return path, path

    yield from open_lab_behind_fakes(tmp_path_factory, fleet, ("robot", "cloud"), CREDENTIALS)


def fetch(url: str) -> str:
    """A command printing `url`'s body on a node (the image has python3, not curl)."""
    return ("python3 -c \"import sys, urllib.request; sys.stdout.write(urllib.request"
            f".urlopen('{url}', timeout=20).read().decode())\"")


def endpoints(lab: Lab) -> Endpoints:
    return Endpoints.from_store(lab.fleet, lab.store)


def answers(lab: Lab, client: str) -> dict[str, set[str]]:
    """Each node's PowerDNS: the addresses it gives for the routed name to `client` (ECS)."""
    return {node: set(ask(endpoint, EDGE + ".", "A", client=client, timeout=5).addresses)
            for node, endpoint in endpoints(lab).items()}


# Answers asked per server where one address is picked at random among two: a server that
# still gave a drained node would show it with probability 1 - 2**-TRIES.
TRIES = 20


def answers_seen(lab: Lab, client: str, tries: int) -> dict[str, set[str]]:
    """Each node's PowerDNS: every address it gave for the routed name to `client` in `tries`
    answers."""
    seen: dict[str, set[str]] = {}
    for _ in range(tries):
        for node, addresses in answers(lab, client).items():
            seen.setdefault(node, set()).update(addresses)
    return seen


def client_near(lab: Lab, node: str) -> str:
    """A client network located where `node` is (its public address is in the nodes' GeoIP
    database at its region's coordinates)."""
    return f"{lab.fleet.node(node).ipv4}/32"


def events_of(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_a_dry_run_plans_the_robot_node_and_touches_nothing(lab: Lab) -> None:
    plan = json.loads(lab.cli("--json", "provision", ROBOT_NODE, "--dry-run").stdout)
    assert plan["steps"][0] == "create server" and plan["steps"][-1] == "deploy"
    assert plan["install"]["wipe_disks"] == ["serial CFLAB-FSN1-A"]
    assert plan["install"]["luks"]["pbkdf"] == "argon2id"
    # Hetzner's dedicated-server network: a /32 whose gateway is reached by an on-link route.
    assert "ip=10.0.2.15::10.0.2.2:255.255.255.255::eth0:off" in plan["install"]["kernel_cmdline"]
    # The Robot server exists (Robot servers are ordered by people): its VM is there, off.
    # Nothing else was made: no lab VM, no Cloud server, no key, no record.
    assert {server.node: server.status for server in lab.provider.list()} == {ROBOT_NODE: "off"}
    assert all(lab.store.get(node) is None for node in NODES)
    assert not (lab.state_dir / "id_ed25519").exists()

    unknown = lab.cli("provision", "nope-9", check=False)
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("error: unknown node 'nope-9'")
    assert "Traceback" not in unknown.stderr


def test_three_nodes_at_once_as_full_clones_with_a_mirrored_uefi_node(
        lab: Lab, controller: Controller) -> None:
    # Three emulated guests at once on two cores: allow an hour.
    result = lab.cli("--json", "provision", *NODES, timeout=3600)
    report = json.loads(result.stdout)
    assert report["failed"] == [] and sorted(report["succeeded"]) == sorted(NODES), report
    for entry in report["nodes"]:
        assert entry["state"] == "deployed", entry
        assert [step["step"] for step in entry["steps"] if not step["substep"]] == \
            PROVISION_STEPS, entry["steps"]
        controller.recovery_keys[entry["node"]] = entry["recovery_key"]
        # Where each node's time went, printed for the run's log (-s).
        print(f"{entry['node']}: steps "
              f"{[(step['step'], step.get('seconds')) for step in entry['steps']]}; "
              f"deploy {json.dumps(entry['deploy_timings'])}")
    [raid] = [entry for entry in report["nodes"] if entry["node"] == RAID_NODE]
    assert "raid1" in [step["step"] for step in raid["steps"]]
    assert [t.to_state for t in lab.store.history(ROBOT_NODE)] == [
        "ordered", "rescue", "installed", "locked", "booted", "deployed"]
    # All three ran at once: every node started before any ended.
    events = events_of(result.stderr)
    starts = [event["time"] for event in events if event["kind"] == "start"]
    ends = [event["time"] for event in events if event["kind"] == "result"]
    assert len(starts) == len(ends) == len(NODES) and max(starts) < min(ends), events

    check_robot_node(lab)
    check_cloud_node(lab)
    check_mirrored_uefi_node(lab, RAID_NODE)

    # A re-run of provision on deployed nodes does nothing and wipes nothing.
    again = json.loads(lab.cli("--json", "provision", *NODES).stdout)
    assert again["failed"] == [] and all(entry["skipped"] for entry in again["nodes"]), again


def check_robot_node(lab: Lab) -> None:
    """fsn-1: encrypted, passphrase nowhere on disk, Hetzner's /32 with its on-link routes
    and the private address, the boot as a server needs it, its SMART disk read end to end."""
    node = ROBOT_NODE
    passphrase = lab.keystore.get(node)
    with lab.shell(node) as shell:
        status = shell.run("cryptsetup status root")[1]
        assert "type:    LUKS2" in status
        assert shell.run("findmnt -no SOURCE /")[1].strip() == "/dev/mapper/root"
        device = next(line.split()[1] for line in status.splitlines()
                      if line.strip().startswith("device:"))
        dump = shell.run(f"cryptsetup luksDump {device}")[1]
        assert "argon2id" in dump and "Version:       \t2" in dump
        # The passphrase went over stdin only: nowhere on the node's disk.
        found = shell.run("grep -rlFx -f /dev/stdin /etc /root /boot /var/log /var/lib "
                          "2>/dev/null; true", input_data=passphrase.encode(), timeout=600)[1]
        assert found.strip() == ""
        assert shell.run("hostname")[1].strip() == node
        # The /32 and the on-link routes, no DHCP; the fleet file's private address on eth1.
        assert shell.run("ip -4 -o addr show dev eth0")[1].split()[3] == "10.0.2.15/32"
        assert "default via 10.0.2.2 dev eth0" in shell.run("ip -4 route show default")[1]
        assert shell.run("ip -4 -o addr show dev eth1")[1].split()[3] == PRIVATE[node]
        assert shell.run("systemctl is-active nftables chrony ssh")[1].split() == [
            "active"] * 3
        # The initramfs checked the root filesystem and mounted it read-write itself, and
        # systemd ran only the generators a server needs (a boot starved of CPU once had
        # them cut off, leaving / read-only).
        assert "rw" in shell.run("findmnt -no OPTIONS /")[1].strip().split(",")
        assert shell.run("readlink /etc/systemd/system-generators/"
                         "systemd-gpt-auto-generator")[1].strip() == "/dev/null"
        # The hybrid layout: booted BIOS here, yet the ESP named in fstab holds GRUB's EFI
        # image too, so the same disk boots a UEFI server.
        code, out, err = shell.run("mount /boot/efi && test -s /boot/efi/EFI/BOOT/BOOTX64.EFI; "
                                   "rc=$?; umount /boot/efi; exit $rc", check=False)
        assert code == 0, f"ESP: {out}{err}"
    console = qemu.VmConfig.load(lab.state_dir / "lab" / node).console_log.read_text(
        errors="replace")
    assert "fsck not present" not in console

    # smartwatch on the node reads a real SMART disk end to end: the lab's extra AHCI disk,
    # which the installer left alone (no partition, no signature).
    smart_serial = qemu.smart_disk_serial(node)
    with lab.shell(node) as shell:
        smart_device = shell.run(
            f"readlink -f /dev/disk/by-id/ata-QEMU_HARDDISK_{smart_serial}")[1].strip()
        assert shell.run(f"lsblk -no NAME {smart_device}")[1].split() == [
            smart_device.rsplit("/", 1)[-1]]
        assert shell.run(f"blkid -p {smart_device} || true")[1].strip() == ""
    table = json.loads(lab.cli("--json", "disks", node).stdout)
    [smart] = [row for row in table if row["serial"] == smart_serial]
    assert (smart["node"], smart["status"], smart["device"], smart["model"]) == (
        node, "ok", smart_device, "QEMU HARDDISK"), table
    assert smart["power_on_hours"] is not None
    assert not [row for row in table if row["device"] == ""], table  # no node-wide warning


def check_cloud_node(lab: Lab) -> None:
    """ash-1: the server the Cloud fake created, on DHCP, with its private address."""
    with lab.shell(CLOUD_NODE) as shell:
        interfaces = shell.run("cat /etc/network/interfaces")[1]
        assert "iface eth0 inet dhcp" in interfaces, interfaces
        assert shell.run("ip -4 -o addr show dev eth1")[1].split()[3] == PRIVATE[CLOUD_NODE]
        assert shell.run("hostname")[1].strip() == CLOUD_NODE
    server_id = lab.store.get_fact(CLOUD_NODE, "server_id")
    assert str(server_id).isdigit(), server_id  # the Cloud API's id, not a lab VM's


def test_a_node_that_comes_up_with_a_failed_unit_is_held_at_its_health_check(
        lab: Lab) -> None:
    node = ROBOT_NODE
    lab.store.set_state(node, "booted", actor="test", reason="health check test")
    # cf-slow times out on its first start only (as units did on a boot starved of CPU):
    # the health check starts it again and it stops being a finding.
    with lab.shell(node) as shell:
        shell.run("systemd-run --unit=cf-broken --property=Type=oneshot false", check=False)
        shell.run("printf '%s\\n' '[Service]' Type=oneshot TimeoutStartSec=3 "
                  "\"ExecStart=/bin/sh -c 'test -e /run/cf-slow || "
                  "{ touch /run/cf-slow; sleep 60; }'\" "
                  "> /etc/systemd/system/cf-slow.service && systemctl daemon-reload")
        shell.run("systemctl start cf-slow.service", check=False)
        _, result, _ = shell.run("systemctl show -p Result --value cf-slow.service")
        assert result.strip() == "timeout"
    stopped = lab.cli("provision", node, check=False)
    assert stopped.returncode == 15, stopped.stderr
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stopped.stderr
    assert "failed units: cf-broken.service (exit-code);" in errors[0], stopped.stderr
    assert "restarted cf-slow.service" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert lab.store.get(node).state == "booted"
    with lab.shell(node) as shell:
        shell.run("systemctl reset-failed cf-broken.service && "
                  "rm /etc/systemd/system/cf-slow.service && systemctl daemon-reload")
    resumed = json.loads(lab.cli("--json", "provision", node).stdout)
    assert resumed["state"] == "deployed"
    assert [step["step"] for step in resumed["steps"] if not step["substep"]] == [
        "health check", "deploy"]


def test_nodes_enter_dns_and_every_server_answers_with_the_nearest_active_node(
        lab: Lab) -> None:
    assert sorted(endpoints(lab)) == sorted(NODES), "a node's deploy recorded no DNS endpoint"
    for node in NODES:
        lab.cli("undrain", node)
        assert lab.store.get(node).state == "active"
    verified = lab.cli("--json", "dns", "verify", check=False)
    assert verified.returncode == 0, f"{verified.stdout}\n{verified.stderr}"

    fsn = {lab.fleet.node(node).ipv4 for node in ("fsn-1", "fsn-2")}
    ash = {lab.fleet.node("ash-1").ipv4}
    near_fsn, near_ash = answers(lab, client_near(lab, "fsn-1")), \
        answers(lab, client_near(lab, "ash-1"))
    # Every node's own server, reached through its VM, gives the same nearest answers.
    assert set(near_fsn) == set(near_ash) == set(NODES)
    for node in NODES:
        assert near_fsn[node] and near_fsn[node] <= fsn, near_fsn
        assert near_ash[node] == ash, near_ash


def test_mesh_handshakes_replication_crosses_vms_and_node_exporter_serves(
        lab: Lab) -> None:
    mesh = {node: lab.store.get_fact(node, "mesh_address") for node in NODES}
    assert len(set(mesh.values())) == len(NODES) and all(mesh.values()), mesh
    for node in NODES:
        with lab.shell(node) as shell:
            # Traffic to every peer over the mesh makes WireGuard handshake with each.
            # (The image has no ping: a UDP datagram is enough to start a handshake.)
            for peer, address in mesh.items():
                if peer != node:
                    shell.run(f"bash -c 'echo hello > /dev/udp/{address}/9'", check=False)
            deadline, handshakes = time.monotonic() + 60, [""]
            while time.monotonic() < deadline:
                handshakes = shell.run("wg show wg0 latest-handshakes")[1].split()
                if len(handshakes) == 2 * (len(NODES) - 1) and all(
                        int(stamp) > 0 for stamp in handshakes[1::2]):
                    break
                time.sleep(2)
            assert len(handshakes) == 2 * (len(NODES) - 1), handshakes
            assert all(int(stamp) > 0 for stamp in handshakes[1::2]), \
                f"{node}: a peer never handshook: {handshakes}"
            # The peers' endpoints are their LAN addresses, not the (unreachable) public ones.
            endpoints_seen = shell.run("wg show wg0 endpoints")[1]
            assert "10.99.0." in endpoints_seen, endpoints_seen
            # Node exporter answers its neighbour over the mesh (backend ports are open
            # there only), with the textfile collector smartwatch writes to.
            neighbour = mesh[NODES[(NODES.index(node) + 1) % len(NODES)]]
            metrics = shell.run(fetch(f"http://{neighbour}:9100/metrics"), timeout=60)[1]
            assert "node_cpu_seconds_total" in metrics, metrics[-500:]
            assert "node_textfile_scrape_error 0" in metrics, metrics[-500:]

    marker = f"written on fsn-1 at {time.time():.0f}"
    with lab.shell("fsn-1") as shell:
        shell.run(f"{PSQL} \"CREATE TABLE IF NOT EXISTS e2e (note text); "
                  f"INSERT INTO e2e VALUES ('{marker}')\"")
        # The three were deployed at once: a replica whose deploy ran before the primary was
        # ready seeds itself by its timer (a try 30 s after the last; one try waits up to 15 s
        # for the primary; then the copy and PostgreSQL's start, slow under emulation).
        deadline, senders = time.monotonic() + REPLICA_SEED_SECONDS, ""
        while True:
            senders = shell.run(f"{PSQL} \"SELECT count(*) FROM pg_stat_replication "
                                "WHERE state = 'streaming'\"")[1].strip()
            if senders == "2" or time.monotonic() > deadline:
                break
            time.sleep(5)
        if senders != "2":
            for replica in ("fsn-2", "ash-1"):
                with lab.shell(replica) as replica_shell:
                    journal = replica_shell.run(
                        "journalctl -u clonefleet-replica-seed --no-pager -n 30",
                        check=False)[1]
                print(f"--- {replica}: clonefleet-replica-seed journal\n{journal}")
        assert senders == "2", f"streaming replicas on the primary: {senders}"
    for replica in ("fsn-2", "ash-1"):
        with lab.shell(replica) as shell:
            deadline, seen = time.monotonic() + 60, ""
            while time.monotonic() < deadline:
                seen = shell.run(f"{PSQL} \"SELECT note FROM e2e\"", check=False)[1]
                if marker in seen:
                    break
                time.sleep(2)
            assert marker in seen, f"{replica} did not replay the primary's row: {seen}"
            assert shell.run(f"{PSQL} 'SELECT pg_is_in_recovery()'")[1].strip() == "t"


def test_pebble_certificate_through_the_nodes_dns_is_served_on_443_by_every_node(
        lab: Lab, controller: Controller, tmp_path: Path) -> None:
    # Pebble validates DNS-01 by asking fsn-1's PowerDNS (through its VM's forwarded port).
    dns_port = endpoints(lab)["fsn-1"].dns_port
    controller.pebble = start_pebble(tmp_path / "pebble", dns_port)
    lab.fleet_path.write_text(lab.fleet_path.read_text() + (
        f'\n[services.certs]\ndirectory_url = "{controller.pebble.directory_url}"\n'
        f'ca_bundle = "{controller.pebble.ca_bundle}"\nemail = "ops@example.com"\n'))
    issued = lab.cli("--json", "cert", "issue", timeout=900)
    assert json.loads(issued.stdout)["issued"] is True, issued.stdout

    # The transport's own deploy is enough to hand the certificate out (the next test runs
    # the whole node deploy again and finds nothing left to change).
    deployed = json.loads(lab.cli("--json", "deploy", *NODES, "--deploy",
                                  "deploys.transport:transport", timeout=2400).stdout)
    for node in NODES:
        assert not deployed[node]["failed"], deployed[node]
        assert any("certificate" in name or "tls" in name.lower()
                   for name in deployed[node]["changed"]), deployed[node]["changed"]

    root = controller.pebble.issuing_root().public_bytes(serialization.Encoding.PEM).decode()
    for node in NODES:
        port = lab.store.get_fact(node, "forwarded_ports")["tcp/443"][1]
        context = ssl.create_default_context(cadata=root)
        context.set_alpn_protocols(["h2", "http/1.1"])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
                context.wrap_socket(raw, server_hostname=EDGE) as tls:
            assert tls.selected_alpn_protocol() == "h2"
            leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
            names = leaf.extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
            assert EDGE in names and f"{node}.lab.clonefleet.test" in names
        context.set_alpn_protocols(["http/1.1"])
        for path, status, text in (("/", 200, f'"node": "{node}"'),
                                   ("/.well-known/clonefleet/health", 200, "")):
            response = https_get(context, port, path)
            assert response.startswith(f"HTTP/1.1 {status}"), response[:300]
            assert "strict-transport-security" in response.lower(), response[:600]
            assert text in response, response[-300:]


def https_get(context: ssl.SSLContext, port: int, path: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
            context.wrap_socket(raw, server_hostname=EDGE) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {EDGE}\r\nConnection: close\r\n\r\n"
                    .encode())
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def test_a_second_deploy_changes_nothing(lab: Lab) -> None:
    again = json.loads(lab.cli("--json", "deploy", *NODES, timeout=2400).stdout)
    for node in NODES:
        assert not again[node]["failed"], again[node]
        assert again[node]["changed"] == [], f"{node}: {again[node]['changed']}"


# The rollout's repository, as the guests reach it: qemu's user network maps 10.0.2.2 to the
# controller's loopback, where the repository listens.
GUEST_LOOPBACK = "10.0.2.2"
SAVED_SOURCES = "/root/cftest-saved-apt"


def point_node_at(shell: RemoteShell, repo: AptRepo, staging: Path) -> None:
    """Make a node use only `repo` (its Debian sources set aside, so nothing leaves the
    machine) and install the older versions of the repository's packages with dpkg."""
    port = repo.url.rsplit(":", 1)[1]
    shell.run(f"mkdir -p {SAVED_SOURCES} /etc/apt/keyrings /tmp/cftest-debs && "
              f"if [ -e /etc/apt/sources.list ]; then mv /etc/apt/sources.list "
              f"{SAVED_SOURCES}/; fi && find /etc/apt/sources.list.d -mindepth 1 "
              f"-maxdepth 1 -exec mv -t {SAVED_SOURCES} {{}} +")
    with repo.keyring.open("rb") as source:
        shell.stream("cat > /etc/apt/keyrings/clonefleet-test.gpg", source)
    sources = repo.sources("/etc/apt/keyrings/clonefleet-test.gpg",
                           f"http://{GUEST_LOOPBACK}:{port}")
    shell.run("cat > /etc/apt/sources.list.d/clonefleet-test.sources",
              input_data=sources.encode())
    names = []
    for package in INSTALLED:
        deb = build_deb(staging, package)
        with deb.open("rb") as source:
            shell.stream(f"cat > /tmp/cftest-debs/{deb.name}", source)
        names.append(f"/tmp/cftest-debs/{deb.name}")
    shell.run(f"dpkg -i {' '.join(names)}", timeout=600)


def restore_sources(shell: RemoteShell) -> None:
    shell.run(f"rm -f /etc/apt/sources.list.d/clonefleet-test.sources && "
              f"find {SAVED_SOURCES} -mindepth 1 -maxdepth 1 -name '*.sources' "
              f"-exec mv -t /etc/apt/sources.list.d {{}} + ; "
              f"if [ -e {SAVED_SOURCES}/sources.list ]; then mv {SAVED_SOURCES}/sources.list "
              "/etc/apt/; fi", check=False)


def print_overhead(store: StateStore, wall: float) -> None:
    """The rollout's orchestration overhead (`clonefleet.rollout.overhead`, as
    `bench/rollout.py --from-fleet` prints it) and the wall time this test saw, for the run's
    log (-s)."""
    run, progress = last_run(store, NODES)
    assert run is not None
    for node, entry in progress.items():
        print(f"{node}: " + ", ".join(f"{step} {seconds:.1f} s"
                                      for step, seconds in entry.seconds.items()))
    result = orchestration_overhead(run.started_at, progress)
    print(f"rollout wall {result.wall:.1f} s (the CLI's: {wall:.1f} s); every node's upgrade "
          f"+ reboot {result.work:.1f} s (ratio {result.ratio_to_sum:.2f}); the slowest per "
          f"batch {result.unavoidable:.1f} s (overhead ratio {result.ratio:.2f})")


def check_batches(batches: list[list[str]]) -> None:
    """Ashburn's node beside one of Falkenstein's, then Falkenstein's other one."""
    assert len(batches) == 2, batches
    first, second = (sorted(batch) for batch in batches)
    assert first[0] == "ash-1" and len(first) == 2 and first[1].startswith("fsn-"), batches
    assert second == sorted({"fsn-1", "fsn-2"} - {first[1]}), batches


def test_a_security_update_needing_a_reboot_rolls_across_the_fleet(
        lab: Lab, tmp_path: Path) -> None:
    # Ashburn has one node: a rollout may take it out only with a minimum of 0 there (the
    # fleet-wide minimum of 1 still holds). Falkenstein keeps its minimum of 1.
    text = lab.fleet_path.read_text()
    ash = text.index("[regions.ash]")
    lab.fleet_path.write_text(text[:ash] + text[ash:].replace("min_active = 1",
                                                              "min_active = 0", 1))
    repo = AptRepo(tmp_path / "apt", {"bookworm-security": SECURITY_UPGRADES,
                                      "bookworm-updates": OTHER_UPGRADES})
    repo.start()
    boots: dict[str, str] = {}
    try:
        for node in NODES:
            with lab.shell(node) as shell:
                point_node_at(shell, repo, tmp_path / "debs")
                boots[node] = shell.run(BOOT_ID)[1].strip()

        # Two at once fleet-wide, one per region: Falkenstein's two nodes in turn, Ashburn's
        # beside the first.
        planned = json.loads(lab.cli("--json", "update", "--dry-run", *BATCHING,
                                     timeout=900).stdout)
        assert sorted(planned["expected_reboots"]) == sorted(NODES), planned
        check_batches(planned["batches"])

        # Every second; a server is silent while its node reboots.
        watch = DnsWatch(load_fleet(lab.fleet_path), endpoints(lab), EDGE + ".",
                         interval=1.0, timeout=2.0).start()
        started = time.monotonic()
        try:
            rolled = lab.cli("--json", "update", *BATCHING, timeout=ROLLOUT_SECONDS,
                             check=False)
        finally:
            watch.stop()
        wall = time.monotonic() - started
        assert rolled.returncode == 0, f"{rolled.stdout}\n{rolled.stderr}{lab.consoles()}"
        report = json.loads(rolled.stdout)
        assert report["status"] == "done", report
        assert report["batches"] == planned["batches"], report["batches"]
        for entry in report["nodes"]:
            assert entry["result"] == "done", entry
            assert entry["rebooted"] is True, entry
            assert sorted(entry["packages"]) == ["cf-tool 1.0 → 1.1", "libcf1 (new) → 1.1",
                                                 "linux-image-cftest 1.0 → 2.0"], entry
            assert entry["out_of_dns_seconds"] >= 35, entry  # TTL 30 s + grace 5 s

        # Throughout: Falkenstein never below 1 in any answer, the fleet never empty, every
        # node left the answers once, and every server answered (before or after its reboot).
        watch.check_minimums(silence_allowed=True)  # Falkenstein's 1 (Ashburn's now 0)
        assert watch.fewest["fsn"] >= 1, watch.fewest
        assert watch.absent == set(NODES), watch.absent
        assert all(watch.answered.get(node, 0) > 10 for node in NODES), watch.answered
        assert watch.silences, "no server was ever silent: did any node reboot?"

        store = lab.store
        print_overhead(store, wall)
        for node in NODES:
            assert store.get(node).state == "active", node
            with lab.shell(node) as shell:
                assert shell.run(BOOT_ID)[1].strip() != boots[node], f"{node} did not reboot"
                versions = shell.run("dpkg-query -W -f '${Package} ${Version}\\n' cf-tool "
                                     "cf-extra linux-image-cftest")[1].split("\n")
                assert sorted(line for line in versions if line) == [
                    "cf-extra 1.0", "cf-tool 1.1", "linux-image-cftest 2.0"], versions
                assert shell.run("test -e /var/run/reboot-required", check=False)[0] != 0
        # And every server answers with every node again.
        for node, addresses in answers(lab, ANYWHERE).items():
            assert addresses == {lab.fleet.node(name).ipv4 for name in NODES}, (node, addresses)
        # Nothing left to do: a second rollout updates nothing.
        again = json.loads(lab.cli("--json", "update", timeout=900).stdout)
        assert again["batches"] == [], again
    finally:
        for node in NODES:
            with contextlib.suppress(Exception), lab.shell(node) as shell:
                restore_sources(shell)
        repo.stop()
        lab.fleet_path.write_text(text)


@pytest.mark.skipif(not NODE_UNLOCKERS, reason="on request: its deploy and two reboots cost "
                    "about 25 min under emulation; CLONEFLEET_TEST_NODE_UNLOCKERS=1 runs it")
def test_two_nodes_unlock_a_third_while_the_controller_is_down(
        lab: Lab, controller: Controller, etcd: EtcdServer) -> None:
    # fsn-1 and ash-1 become unlockers (one deploy: their keys made there and granted, every
    # node's Dropbear trusting them from its rebuilt initramfs), reaching the fleet's etcd
    # at qemu's 10.0.2.2. Then fsn-2, active, is power-cycled twice behind clonefleet's
    # back with nothing of clonefleet running on the controller (etcd stands for the
    # fleet's cluster): first with both unlockers up (one of them, never both, sends the
    # passphrase), then with that one stopped (the other alone is enough). Last the
    # controller's unlockd comes back and returns the healthy node to DNS.
    add_unlockers(lab, UNLOCKERS, f"etcd://{GUEST_LOOPBACK}:{etcd.client_port}")
    started = time.monotonic()
    deployed = json.loads(lab.cli("--json", "deploy", *NODES, timeout=3600).stdout)
    print(f"unlockers: deploy {time.monotonic() - started:.0f} s")
    for node in NODES:
        assert not deployed[node]["failed"], deployed[node]
        print(f"{node}: changed {deployed[node]['changed']}")
    keys = unlocker_fingerprints(lab)
    assert sorted(keys) == sorted(UNLOCKERS), keys
    for node in UNLOCKERS:
        check_unlocker_service(lab, node)
    target = NodeUnlockers(lab, RAID_NODE)
    assert state_of(lab, RAID_NODE) == "active"
    alerts = len([title for title in controller.webhook.titles()
                  if title.startswith(f"{RAID_NODE}: rebooted")])
    try:
        both = target.power_cycle_and_wait()
        print(f"unlockers: {RAID_NODE} up in {both.seconds:.0f} s, by {both.unlocked_by}, "
              f"logins {both.deliveries}")
        # One unlocker logged into the node's Dropbear for this boot, never the other.
        [winner] = [node for node in UNLOCKERS if keys[node] in both.deliveries]
        assert set(both.deliveries) == {keys[winner]}, (both, keys)
        assert both.unlocked_by.startswith(f"{winner}:"), both
        # An unexpected reboot of an active node: drained in the store by the unlocker.
        assert state_of(lab, RAID_NODE) in ("draining", "drained") and both.boot.drained

        set_unlocker(lab, winner, running=False)
        other = next(node for node in UNLOCKERS if node != winner)
        alone = target.power_cycle_and_wait()
        print(f"unlockers: {RAID_NODE} up in {alone.seconds:.0f} s, by {alone.unlocked_by}, "
              f"logins {alone.deliveries}")
        assert alone.deliveries and set(alone.deliveries) == {keys[other]}, (alone, keys)
        assert alone.unlocked_by.startswith(f"{other}:"), alone
        # Still out of DNS, and this boot inherits the duty to return it.
        assert alone.boot.drained, alone.boot
        # One alert per boot reached the operators, from the unlockers (claimed in the store).
        titles = [title for title in controller.webhook.titles()
                  if title.startswith(f"{RAID_NODE}: rebooted")]
        assert len(titles) == alerts + 2, controller.webhook.titles()
    finally:
        for node in UNLOCKERS:
            with contextlib.suppress(Exception):
                set_unlocker(lab, node, running=False)

    # The controller is back: its unlockd checks the node over sshd and returns it.
    near, region = client_near(lab, RAID_NODE), region_addresses(lab, RAID_NODE)
    with alerts_from_the_controller(lab, controller), UnlockdProcess(lab, "back") as unlockd:
        wait_for(lambda: state_of(lab, RAID_NODE) == "active", 600,
                 "the controller's unlockd returning the node to DNS", unlockd.log)
    [health] = lab.store.health(RAID_NODE)
    assert health.ok and health.source == "unlockd", health
    served = answers_seen(lab, near, TRIES)
    assert served == {node: region for node in NODES}, served


def region_addresses(lab: Lab, node: str) -> set[str]:
    """The public addresses of every node in `node`'s region."""
    return {lab.fleet.node(name).ipv4 for name in NODES
            if lab.fleet.node(name).region == lab.fleet.node(node).region}


@contextlib.contextmanager
def alerts_from_the_controller(lab: Lab, controller: Controller) -> Iterator[None]:
    """While the controller itself sends alerts (unlockd on this machine), the fleet file
    names the webhook as this machine reaches it (its loopback), not as the agents on the
    nodes do (qemu's 10.0.2.2): one receiver, the address each side knows it by."""
    text = lab.fleet_path.read_text()
    assert text.count(guest_alert_url(controller)) == 1
    lab.fleet_path.write_text(text.replace(guest_alert_url(controller), controller.webhook.url))
    try:
        yield
    finally:
        lab.fleet_path.write_text(text)


def state_of(lab: Lab, node: str) -> str:
    record = lab.store.get(node)
    assert record is not None, f"{node} has no record"
    return record.state


def test_a_failing_disk_alerts_and_drains_its_node_from_every_server(
        lab: Lab, controller: Controller) -> None:
    failing_ip = lab.fleet.node(FAILING).ipv4
    near, region = client_near(lab, FAILING), region_addresses(lab, FAILING)
    # One address per answer, picked at random among the nearest (the failing node and its
    # region's other node): over many answers every server gives both.
    seen = answers_seen(lab, near, TRIES)
    assert seen == {node: region for node in NODES}, seen

    serve = subprocess.Popen(
        [sys.executable, "-m", "clonefleet", "--fleet", str(lab.fleet_path), "serve",
         "--listen", f"127.0.0.1:{controller.serve_port}"], env=lab.env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(controller.serve_port, serve)
        with lab.shell(FAILING) as shell:
            # The agent as deployed, with smartctl replaced by a replay of a disk whose NVMe
            # controller reports its reliability degraded.
            install_replay(shell, "nvme_critical")
            started = time.monotonic()
            code, out, err = shell.run(CHECK, check=False, timeout=600)
        assert code == 2, f"{out}\n{err}"
        result = json.loads(out)
        assert [event["outcome"] for event in result["drain"]] == ["acknowledged"], result

        record = lab.store.get(FAILING)
        assert record.state in ("draining", "drained")
        assert record.actor == f"smartwatch@{FAILING}"
        # Every node's PowerDNS now answers the failing node's own neighbourhood without it.
        served = answers_seen(lab, near, TRIES)
        assert served == {node: region - {failing_ip} for node in NODES}, served
        print(f"smartwatch check → off every server: {time.monotonic() - started:.1f} s")
        deadline = time.monotonic() + 60
        while not any(f"[CRITICAL] {FAILING}" in title for title in controller.webhook.titles()):
            assert time.monotonic() < deadline, f"no alert: {controller.webhook.received}"
            time.sleep(1)
    finally:
        serve.terminate()
        output = serve.communicate(timeout=20)[0]
        assert "Traceback" not in output, output


def wait_for_port(port: int, process: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"clonefleet serve did not listen on {port} in {timeout} s")


def test_key_rotation_and_the_paper_recovery_key_on_the_mirrored_node(
        lab: Lab, controller: Controller) -> None:
    recovery_key = controller.recovery_keys[RAID_NODE]
    # Rotated before the reboots below: each of them unlocks with the new passphrase.
    check_key_rotation(lab, RAID_NODE, recovery_key)
    check_recovery_key_unlocks_a_boot(lab, RAID_NODE, recovery_key)


def test_the_mirrored_node_boots_from_either_disk_alone_under_unlockd(
        lab: Lab, controller: Controller) -> None:
    with alerts_from_the_controller(lab, controller):  # unlockd runs on the controller
        # Both host keys rotated; the first reboot then presents the new initramfs key while
        # the controller pins the one from before the rotation (as if its pin had not moved).
        pinned, presented = check_host_key_rotation(lab, RAID_NODE)
        check_boots_from_either_disk(lab, RAID_NODE, UnlockdReboots(
            lab, RAID_NODE, controller.webhook, (pinned, presented)))
