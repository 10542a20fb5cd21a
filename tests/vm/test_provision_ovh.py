"""Two nodes provisioned with one command, concurrently, on the two providers the other VM
tests do not drive: a Hetzner Cloud server (the `hetzner-cloud` driver against the local
hcloud fake, DHCP) and an OVH dedicated server (the `ovh` driver against the local OVH fake,
static network). The OVH node is made to fail mid-install (the fleet file names a disk
serial its server does not have): the Cloud node still ends deployed, the failure is
reported with its step, and once the fleet file is fixed the same command finishes it.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clonefleet.fakes import serve
from clonefleet.fakes.machines import LabMachines
from clonefleet.fakes.serve import DEFAULT_CREDENTIALS
from clonefleet.inventory import load_fleet

from .conftest import Lab, open_lab

pytestmark = pytest.mark.vm
CLOUD, OVH = "nbg-1", "gra-1"
GOOD_SERIAL, WRONG_SERIAL = "CFLAB-GRA1-A", "CFLAB-GRA1-X"
ENV = {"LAB_HCLOUD_TOKEN": DEFAULT_CREDENTIALS["hetzner-cloud"]["token"],
       **{f"OVH_{key.upper()}": value for key, value in DEFAULT_CREDENTIALS["ovh"].items()}}

FLEET = """
[fleet]
name = "manylab"
domain = "manylab.clonefleet.test"
ssh_key = ""
allowed_tcp_ports = [22]

[providers.cloud]
driver = "hetzner-cloud"
api_url = "http://127.0.0.1:{cloud_port}/v1"
token_env = "LAB_HCLOUD_TOKEN"
location = "nbg1"
lab_routes = true

[providers.ovhlab]
driver = "ovh"
api_url = "http://127.0.0.1:{ovh_port}/1.0"
lab_routes = true

[regions.nbg]
provider = "cloud"
location = "Nuremberg, DE"
latitude = 49.45
longitude = 11.08

[regions.gra]
provider = "ovhlab"
location = "Gravelines, FR"
latitude = 50.99
longitude = 2.13

[nodes.nbg-1]
region = "nbg"
disks = ["CFLAB-NBG1-A"]
memory_mb = 2048
disk_size_gb = 8
ipv4 = "203.0.113.41"

[nodes.gra-1]
region = "gra"
disks = ["{ovh_serial}"]
memory_mb = 2048
disk_size_gb = 8
ipv4 = "203.0.113.51"
service_name = "ns1051.ip-203-0-113.eu"

[nodes.gra-1.network]
address = "10.0.2.15"
prefix = 24
gateway = "10.0.2.2"
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    started: list[serve.Served] = []

    def fleet(state_root: Path) -> Path:
        ports = {"cloud_port": free_port(), "ovh_port": free_port()}
        # The machine room builds each server's VM from the right fleet file: the OVH
        # server's disk has serial CFLAB-GRA1-A. The file clonefleet is given at first
        # names another serial, as a fleet file with a typo would.
        truth = state_root / "manylab-truth.toml"
        truth.write_text(FLEET.format(ovh_serial=GOOD_SERIAL, **ports))
        actual = load_fleet(truth)
        for provider in ("cloud", "ovhlab"):
            machines = LabMachines(state_root / "manylab", nodes={
                node.name: node for node in serve.provider_nodes(actual, provider)})
            served = serve.build(actual, provider, machines, delay=0.5)
            served.fake.start()
            started.append(served)
        path = state_root / "manylab.toml"
        path.write_text(FLEET.format(ovh_serial=WRONG_SERIAL, **ports))
        return path

    try:
        yield from open_lab(tmp_path_factory, fleet, ENV)
    finally:
        for served in started:
            served.fake.shutdown()


def events_of(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_two_nodes_at_once_one_failing_mid_install_then_a_rerun_finishes_it(lab: Lab) -> None:
    first = lab.cli("--json", "provision", CLOUD, OVH, check=False)
    assert first.returncode == 30, f"{first.stdout}\n{first.stderr}{lab.consoles()}"
    assert "Traceback" not in first.stderr
    result = json.loads(first.stdout)
    nodes = {entry["node"]: entry for entry in result["nodes"]}
    assert (result["succeeded"], result["failed"]) == ([CLOUD], [OVH])
    assert nodes[CLOUD]["ok"] and nodes[CLOUD]["state"] == "deployed"
    assert [step["step"] for step in nodes[CLOUD]["steps"] if not step["substep"]] == [
        "create server", "boot rescue", "build node layer", "install", "boot from disk",
        "unlock", "health check", "deploy"]
    failed = nodes[OVH]
    assert not failed["ok"] and failed["failed_step"] == "install", failed
    assert WRONG_SERIAL in failed["error"] and "\n" not in failed["error"]
    assert failed["exit_code"] == 5

    # Both ran at once: each node started before the other one ended.
    events = events_of(first.stderr)
    starts = {event["node"]: event["time"] for event in events if event["kind"] == "start"}
    ends = {event["node"]: event["time"] for event in events if event["kind"] == "result"}
    assert starts[OVH] < ends[CLOUD] and starts[CLOUD] < ends[OVH]
    assert {event["node"] for event in events if event["kind"] == "progress"} >= {CLOUD}
    # Within one node, the node layer was built while the rescue system booted.
    began = {event["step"]: event["time"] for event in events
             if event["node"] == CLOUD and event["kind"] == "step"}
    took = {step["step"]: step["seconds"] for step in nodes[CLOUD]["steps"]}
    # (The two steps start in two threads at the same moment, in either order.)
    assert began["build node layer"] < began["boot rescue"] + took["boot rescue"] - 10
    assert nodes[CLOUD]["total_seconds"] < sum(
        step["seconds"] for step in nodes[CLOUD]["steps"] if not step["substep"])

    # The OVH server booted its rescue system and stopped at the disk check: nothing was
    # written, and its netboot is back on the hard disk.
    assert lab.store.get(OVH).state == "rescue"

    lab.fleet_path.write_text(lab.fleet_path.read_text().replace(WRONG_SERIAL, GOOD_SERIAL))
    second = lab.cli("--json", "provision", CLOUD, OVH)
    result = json.loads(second.stdout)
    nodes = {entry["node"]: entry for entry in result["nodes"]}
    assert result["failed"] == [] and result["succeeded"] == [CLOUD, OVH]
    assert nodes[CLOUD]["skipped"] and nodes[CLOUD]["state"] == "deployed"
    assert nodes[OVH]["state"] == "deployed"

    # Each node answers on its pinned host key, with the network its provider gives.
    with lab.shell(CLOUD) as shell:
        _, routes, _ = shell.run("ip -4 route show default")
        assert "dhcp" in routes or "10.0.2.2" in routes
        _, interfaces, _ = shell.run("cat /etc/network/interfaces")
        assert "inet dhcp" in interfaces
    with lab.shell(OVH) as shell:
        _, interfaces, _ = shell.run("cat /etc/network/interfaces")
        assert "inet static" in interfaces and "10.0.2.15/24" in interfaces
        _, name, _ = shell.run("hostname")
        assert name.strip() == OVH

    # Both VMs sit on the lab's LAN (eth1, a multicast socket on loopback): with an address
    # each there, one reaches the other's sshd. What the lab provider's own nodes configure
    # on eth1 is checked in tests/unit/test_lab_lan.py.
    lan = {CLOUD: "10.99.0.201", OVH: "10.99.0.202"}
    for node, address in lan.items():
        with lab.shell(node) as shell:
            shell.run(f"ip addr replace {address}/24 dev eth1 && ip link set eth1 up")
    with lab.shell(CLOUD) as shell:
        code, banner, error = shell.run(
            "python3 -c \"import socket; s = socket.create_connection(('" + lan[OVH] +
            "', 22), 20); print(s.recv(64).decode())\"", check=False, timeout=120)
        assert code == 0 and banner.startswith("SSH-"), f"no LAN between the VMs: {error}"
