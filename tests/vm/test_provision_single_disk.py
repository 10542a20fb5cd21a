"""End to end on one lab VM: blank disk → encrypted, remotely unlocked, deployed node.

The node is a Hetzner dedicated server as the `hetzner-robot` driver sees one: the Robot API
is the local fake (`clonefleet.fakes.robot`), server 321 is a lab VM behind it, and the
network is what Hetzner gives a dedicated server: a /32 with an off-link gateway and
nothing else (10.0.2.15/32 via 10.0.2.2 inside qemu's user network), so Dropbear, sshd and
the deploy all depend on the on-link routes in the initramfs and in the booted system.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clonefleet.fakes import robot
from clonefleet.fakes.machines import LabMachines, MachineSpec
from clonefleet.inventory.model import Node
from clonefleet.lab import qemu
from clonefleet.ssh import generate_ed25519

from .conftest import Lab, open_lab

pytestmark = pytest.mark.vm
NODE = "fsn-1"
# The base and the smartwatch agent: this module proves the Robot network, unlock, pinning,
# health and idempotence; the full clone's services are proved on the several-nodes VMs and
# in tests/chroot, and a full deploy here would add minutes of emulated CPU to the suite.
DEPLOY = ("--deploy", "deploys.full:base_node")
SERVER = 321
PUBLIC_IPV4 = "203.0.113.21"  # what Robot reports; the VM itself is 10.0.2.15 (qemu)
ROBOT_ENV = {"HETZNER_ROBOT_USER": "lab-robot", "HETZNER_ROBOT_PASSWORD": "lab-robot-secret"}

FLEET = """
[fleet]
name = "robotlab"
domain = "robotlab.clonefleet.test"
ssh_key = ""
allowed_tcp_ports = [22]

[providers.robot]
driver = "hetzner-robot"
api_url = "{url}"
lab_routes = true

[regions.fsn]
provider = "robot"
location = "Falkenstein, DE"
latitude = 50.47
longitude = 12.37

[nodes.fsn-1]
region = "fsn"
disks = ["CFLAB-FSN1-A"]
memory_mb = 2048
disk_size_gb = 8
ipv4 = "{ip}"
robot_server = {server}

[nodes.fsn-1.network]
address = "10.0.2.15"
prefix = 32
gateway = "10.0.2.2"
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    fakes: list[robot.RobotFake] = []

    def fleet(state_root: Path) -> Path:
        node = Node(name=NODE, region="fsn", provider="robot", disks=("CFLAB-FSN1-A",),
                    ipv4=PUBLIC_IPV4)
        machines = LabMachines(state_root / "robotlab", {str(SERVER): MachineSpec.for_node(node)})
        fake = robot.make_server(machines, user=ROBOT_ENV["HETZNER_ROBOT_USER"],
                                 password=ROBOT_ENV["HETZNER_ROBOT_PASSWORD"], boot_delay=1.0)
        fake.add_server(SERVER, NODE, PUBLIC_IPV4)
        fake.start()
        fakes.append(fake)
        path = state_root / "robotlab.toml"
        path.write_text(FLEET.format(url=fake.url, ip=PUBLIC_IPV4, server=SERVER))
        return path

    try:
        yield from open_lab(tmp_path_factory, fleet, ROBOT_ENV)
    finally:
        for fake in fakes:
            fake.shutdown()


def test_dry_run_prints_the_plan_and_touches_nothing(lab: Lab) -> None:
    result = lab.cli("--json", "provision", NODE, "--dry-run")
    plan = json.loads(result.stdout)
    assert plan["steps"][0] == "create server" and plan["steps"][-1] == "deploy"
    assert plan["install"]["wipe_disks"] == ["serial CFLAB-FSN1-A"]
    assert plan["install"]["luks"]["pbkdf"] == "argon2id"
    # Hetzner's dedicated-server network: a /32 whose gateway is reached by an on-link route.
    assert "ip=10.0.2.15::10.0.2.2:255.255.255.255::eth0:off" in plan["install"]["kernel_cmdline"]
    # The server exists (Robot servers are ordered by people): its VM is there, powered off.
    assert [server.status for server in lab.provider.list()] == ["off"]
    assert lab.store.get(NODE) is None
    assert not (lab.state_dir / "id_ed25519").exists()


def test_unknown_node_is_one_line_error_without_traceback(lab: Lab) -> None:
    result = lab.cli("provision", "nope-9", check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown node 'nope-9'")
    assert "Traceback" not in result.stderr


def test_lab_node_is_encrypted_unlockable_pinned_and_idempotent(lab: Lab) -> None:
    report = json.loads(lab.cli("--json", "provision", NODE, *DEPLOY).stdout)
    assert report["state"] == "deployed"
    steps = [step["step"] for step in report["steps"] if not step["substep"]]
    assert steps == ["create server", "boot rescue", "build node layer", "install",
                     "boot from disk", "unlock", "health check", "deploy"]
    assert [t.to_state for t in lab.store.history(NODE)] == [
        "ordered", "rescue", "installed", "locked", "booted", "deployed"]

    passphrase = lab.keystore.get(NODE)
    with lab.shell(NODE) as shell:
        status = shell.run("cryptsetup status root")[1]
        assert "type:    LUKS2" in status
        assert shell.run("findmnt -no SOURCE /")[1].strip() == "/dev/mapper/root"
        device = next(line.split()[1] for line in status.splitlines()
                      if line.strip().startswith("device:"))
        dump = shell.run(f"cryptsetup luksDump {device}")[1]
        assert "argon2id" in dump and "Version:       \t2" in dump
        # The passphrase went over stdin only: nowhere on the node's disk.
        found = shell.run("grep -rlFx -f /dev/stdin /etc /root /boot /var/log /var/lib "
                          "2>/dev/null; true", input_data=passphrase.encode())[1]
        assert found.strip() == ""
        assert shell.run("hostname")[1].strip() == NODE
        # Only the /32 and the on-link routes: no DHCP, no other address.
        assert shell.run("ip -4 -o addr show dev eth0")[1].split()[3] == "10.0.2.15/32"
        assert "default via 10.0.2.2 dev eth0" in shell.run("ip -4 route show default")[1]
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
    console = qemu.VmConfig.load(lab.state_dir / "lab" / NODE).console_log.read_text(
        errors="replace")
    assert "fsck not present" not in console

    # smartwatch on the node reads a real SMART disk end to end: the lab's extra AHCI disk,
    # which the installer left alone (no partition, no signature).
    smart_serial = qemu.smart_disk_serial(NODE)
    with lab.shell(NODE) as shell:
        smart_device = shell.run(
            f"readlink -f /dev/disk/by-id/ata-QEMU_HARDDISK_{smart_serial}")[1].strip()
        assert shell.run(f"lsblk -no NAME {smart_device}")[1].split() == [
            smart_device.rsplit("/", 1)[-1]]
        assert shell.run(f"blkid -p {smart_device} || true")[1].strip() == ""
    table = json.loads(lab.cli("--json", "disks", NODE).stdout)
    [smart] = [row for row in table if row["serial"] == smart_serial]
    assert (smart["node"], smart["status"], smart["device"], smart["model"]) == (
        NODE, "ok", smart_device, "QEMU HARDDISK"), table
    assert smart["power_on_hours"] is not None
    assert not [row for row in table if row["device"] == ""], table  # no node-wide warning

    # A re-run of provision on a deployed node does nothing and wipes nothing.
    again = json.loads(lab.cli("--json", "provision", NODE, *DEPLOY).stdout)
    assert again["skipped"] and again["state"] == "deployed"

    second = json.loads(lab.cli("--json", "deploy", NODE, *DEPLOY).stdout)[NODE]
    assert not second["failed"]
    assert second["changed"] == [], f"second deploy changed: {second['changed']}"
    assert second["unchanged"] >= 10

    # A reboot stops in the initramfs: Dropbear answers, sshd does not.
    ssh_port = lab.store.get_fact(NODE, "ssh")["port"]
    with lab.shell(NODE) as shell:
        shell.run("systemd-run --on-active=1 systemctl reboot", check=False)
    config = qemu.VmConfig.load(lab.state_dir / "lab" / NODE)
    deadline = time.monotonic() + 120
    while qemu.answers(ssh_port) and time.monotonic() < deadline:
        time.sleep(2)
    qemu.wait_for_port(config.dropbear_port, config=config, timeout=600, what="Dropbear")
    assert not qemu.answers(ssh_port)

    # A changed Dropbear host key is refused, never auto-accepted.
    pinned = lab.store.get_fact(NODE, "dropbear_host_key")
    lab.store.set_fact(NODE, "dropbear_host_key", generate_ed25519().public_line)
    refused = lab.cli("unlock", NODE, check=False)
    assert refused.returncode == 8, refused.stderr
    assert "not the key pinned at install time" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not qemu.answers(ssh_port)

    lab.store.set_fact(NODE, "dropbear_host_key", pinned)
    unlocked = json.loads(lab.cli("--json", "unlock", NODE).stdout)
    assert unlocked["unlocked"] is True
    with lab.shell(NODE) as shell:
        assert "is active" in shell.run("cryptsetup status root")[1]

    # A node that comes up with a failed unit is not deployed: provision stops at its health
    # check with the finding in one line, and goes on once the node is healthy.
    lab.store.set_state(NODE, "booted", actor="test", reason="health check test")
    # cf-slow times out on its first start only (as units did on a boot starved of CPU):
    # the health check starts it again and it stops being a finding.
    with lab.shell(NODE) as shell:
        shell.run("systemd-run --unit=cf-broken --property=Type=oneshot false", check=False)
        shell.run("printf '%s\\n' '[Service]' Type=oneshot TimeoutStartSec=3 "
                  "\"ExecStart=/bin/sh -c 'test -e /run/cf-slow || "
                  "{ touch /run/cf-slow; sleep 60; }'\" "
                  "> /etc/systemd/system/cf-slow.service && systemctl daemon-reload")
        shell.run("systemctl start cf-slow.service", check=False)
        _, result, _ = shell.run("systemctl show -p Result --value cf-slow.service")
        assert result.strip() == "timeout"
    stopped = lab.cli("provision", NODE, *DEPLOY, check=False)
    assert stopped.returncode == 15, stopped.stderr
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stopped.stderr
    assert "failed units: cf-broken.service (exit-code);" in errors[0], stopped.stderr
    assert "restarted cf-slow.service" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert lab.store.get(NODE).state == "booted"
    with lab.shell(NODE) as shell:
        shell.run("systemctl reset-failed cf-broken.service")
    resumed = json.loads(lab.cli("--json", "provision", NODE, *DEPLOY).stdout)
    assert resumed["state"] == "deployed"
    assert [step["step"] for step in resumed["steps"] if not step["substep"]] == [
        "health check", "deploy"]
