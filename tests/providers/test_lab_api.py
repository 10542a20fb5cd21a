"""`clonefleet lab api PROVIDER`: a provider table's API fake, seeded from the fleet.

The seeding is checked with stand-in machine rooms (no VMs); the command itself runs as a
subprocess with `--record` and is driven by the real drivers, with the credentials it prints.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from clonefleet.cli import _register, cli
from clonefleet.errors import ConfigError, ProviderError
from clonefleet.fakes import serve
from clonefleet.fakes.hcloud import HcloudApi
from clonefleet.fakes.machines import (
    BootMode,
    LabMachines,
    MachineSpec,
    RecordingMachines,
)
from clonefleet.inventory import Node, load_fleet
from clonefleet.inventory.model import Fleet
from clonefleet.providers import provider_for
from clonefleet.providers.base import ServerInfo, SshAccess
from clonefleet.providers.routes import read_routes, routes_path

pytestmark = pytest.mark.integration

HEAD = """
[fleet]
name = "apilab"
domain = "fleet.example.com"

[regions.fsn]
provider = "lab"
latitude = 50.47
longitude = 12.37
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def robot_fleet(port: int) -> str:
    return HEAD + f"""
[providers.robot]
driver = "hetzner-robot"
api_url = "http://127.0.0.1:{port}"
user_env = "LAB_ROBOT_USER"

[nodes.r1]
region = "fsn"
provider = "robot"
disks = ["SER-R1"]
ipv4 = "203.0.113.11"
ipv6 = "2a01:4f8:1:2::2"
robot_server = 321

[nodes.r2]
region = "fsn"
provider = "robot"
disks = ["SER-R2A", "SER-R2B"]
robot_server = "box-two"

[nodes.r2.network]
address = "203.0.113.12"
prefix = 32
gateway = "172.31.1.1"
"""


def ovh_fleet(port: int) -> str:
    return HEAD + f"""
[providers.ovhlab]
driver = "ovh"
api_url = "http://127.0.0.1:{port}/1.0"

[nodes.o1]
region = "fsn"
provider = "ovhlab"
disks = ["SER-O1"]
ipv4 = "203.0.113.21"
service_name = "ns1001.ip-203-0-113.eu"

[nodes.o2]
region = "fsn"
provider = "ovhlab"
disks = ["SER-O2"]
ipv4 = "203.0.113.22"
server_id = "ns1002.ip-203-0-113.eu"

[nodes.o3]
region = "fsn"
provider = "ovhlab"
disks = ["SER-O3"]
ipv4 = "203.0.113.23"
"""


def cloud_fleet(port: int) -> str:
    return HEAD + f"""
[providers.cloud]
driver = "hetzner-cloud"
api_url = "http://127.0.0.1:{port}/v1"
token_env = "LAB_HCLOUD_TOKEN"

[nodes.c1]
region = "fsn"
provider = "cloud"
disks = ["SER-C1"]
ipv4 = "203.0.113.31"
"""


def fleet_of(tmp_path: Path, text: str) -> Fleet:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return load_fleet(path)


class SeedMachines(RecordingMachines):
    """A machine room that, like LabMachines, wants each server registered first."""

    def __init__(self) -> None:
        super().__init__()
        self.specs: dict[str, MachineSpec] = {}

    def register(self, server: str, spec: MachineSpec) -> None:
        self.calls.append(("register", server, spec.vm))
        self.specs[server] = spec

    def power_on(self, server: str, mode: BootMode, ssh_keys: list[str]) -> None:
        assert server in self.specs, f"{server} powered on before it was registered"
        super().power_on(server, mode, ssh_keys)


# -- seeding (no HTTP calls, no VMs) -----------------------------------------------------------

def test_robot_servers_are_seeded_from_the_nodes(tmp_path: Path) -> None:
    port = free_port()
    fleet = fleet_of(tmp_path, robot_fleet(port))
    machines = SeedMachines()
    served = serve.build(fleet, "robot", machines, delay=0.01)
    try:
        assert served.url == f"http://127.0.0.1:{port}"
        assert served.env == {"LAB_ROBOT_USER": "robot", "HETZNER_ROBOT_PASSWORD":
                              "robot-secret"}
        servers = served.fake.api.servers  # type: ignore[attr-defined]
        assert sorted(servers) == [321, serve.FIRST_NAMED_NUMBER]
        one, two = servers[321], servers[serve.FIRST_NAMED_NUMBER]
        assert (one.name, one.ip, one.ipv6_net, one.machine) == \
            ("r1", "203.0.113.11", "2a01:4f8:1:2::", "321")
        # A server the fleet names gets a number and that name; its network is the node's.
        assert (two.name, two.ip, two.gateway, two.mask, two.machine) == \
            ("box-two", "203.0.113.12", "172.31.1.1", 32, "100001")
        assert machines.calls == [("register", "321", "r1"), ("register", "100001", "r2")]
        spec = machines.specs["100001"]
        assert (spec.disks, spec.public_ipv4) == (("SER-R2A", "SER-R2B"), "203.0.113.12")
        assert [seed.row()["server"] for seed in served.seeds] == ["321", "100001"]
    finally:
        serve._close_unstarted(served.fake)


def test_ovh_servers_are_seeded_by_service_name_and_registered_before_they_run(
        tmp_path: Path) -> None:
    fleet = fleet_of(tmp_path, ovh_fleet(free_port()))
    machines = SeedMachines()
    served = serve.build(fleet, "ovhlab", machines, delay=0.01)
    try:
        fake: Any = served.fake
        assert sorted(fake.servers) == ["ns1001.ip-203-0-113.eu", "ns1002.ip-203-0-113.eu",
                                        "o3"]
        assert fake.servers["ns1002.ip-203-0-113.eu"].ip == "203.0.113.22"
        # Each VM is registered, and none is powered on: a blank lab disk has nothing to
        # boot until the first reboot task (into rescue).
        assert machines.calls == [("register", "ns1001.ip-203-0-113.eu", "o1"),
                                  ("register", "ns1002.ip-203-0-113.eu", "o2"),
                                  ("register", "o3", "o3")]
        assert served.env == {"OVH_APPLICATION_KEY": "lab-application-key",
                              "OVH_APPLICATION_SECRET": "lab-application-secret",
                              "OVH_CONSUMER_KEY": "lab-consumer-key"}
    finally:
        serve._close_unstarted(served.fake)


def test_credentials_are_overridable_per_driver_only(tmp_path: Path) -> None:
    fleet = fleet_of(tmp_path, cloud_fleet(free_port()))
    served = serve.build(fleet, "cloud", RecordingMachines(), credentials={"token": "t0k"})
    try:
        assert served.env == {"LAB_HCLOUD_TOKEN": "t0k"}
        assert served.fake.api.tokens == {"t0k"}  # type: ignore[attr-defined]
    finally:
        serve._close_unstarted(served.fake)
    with pytest.raises(ConfigError, match=r"--user does not apply to \[providers.cloud\] "
                                          r"\(hetzner-cloud\); it takes --token"):
        serve.build(fleet, "cloud", RecordingMachines(), credentials={"user": "x"})


def test_two_nodes_naming_one_robot_server_are_refused(tmp_path: Path) -> None:
    text = robot_fleet(free_port()).replace('robot_server = "box-two"', "robot_server = 321")
    with pytest.raises(ConfigError, match="nodes r1 and r2 both name Robot server 321"):
        serve.robot_seeds(fleet_of(tmp_path, text), "robot")


# -- LabMachines learns the servers the Cloud fake creates --------------------------------------

class StandInLab:
    """LabProvider without qemu: which VM was made and started."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.running: dict[str, str] = {}

    def _info(self, node: Node) -> ServerInfo:
        return ServerInfo(node=node.name, server_id=node.name, status="off",
                          ssh=SshAccess("127.0.0.1", 41022), unlock=SshAccess("127.0.0.1", 41222))

    def ensure_server(self, node: Node) -> ServerInfo:
        self.calls.append(("ensure_server", node.name))
        return self._info(node)

    def info(self, node: Node) -> ServerInfo:
        return self._info(node)

    def boot_rescue(self, node: Node, ssh_public_keys: list[str]) -> SshAccess:
        self.calls.append(("boot_rescue", node.name))
        return self._info(node).ssh

    def boot_disk(self, node: Node) -> None:
        self.calls.append(("boot_disk", node.name))

    def power_off(self, node: Node) -> None:
        self.calls.append(("power_off", node.name))

    def delete(self, node: Node) -> None:
        self.calls.append(("delete", node.name))


def test_lab_machines_give_a_created_server_its_nodes_vm(tmp_path: Path) -> None:
    fleet = fleet_of(tmp_path, cloud_fleet(free_port()))
    lab = StandInLab()
    lines: list[str] = []
    machines = LabMachines(tmp_path, nodes=fleet.nodes, lab=lab, log=lines.append)
    machines.created("1001", "c1", "203.0.113.2")
    assert lab.calls == [("ensure_server", "c1")]
    assert machines.specs["1001"].public_ipv4 == "203.0.113.2"  # the API's address
    assert read_routes(routes_path(tmp_path))["203.0.113.2:22"] == "127.0.0.1:41022"
    machines.power_on("1001", "disk", [])
    assert lab.calls[-1] == ("boot_disk", "c1")

    machines.created("1002", "stranger", "203.0.113.3")
    assert "fake server 1002 (stranger) is no node of the fleet" in lines[-1]
    with pytest.raises(ProviderError, match="fake server 1002 has no lab VM behind it"):
        machines.power_on("1002", "disk", [])


def test_a_cloud_server_the_machine_room_cannot_boot_fails_its_action_not_the_fake(
        tmp_path: Path) -> None:
    fleet = fleet_of(tmp_path, cloud_fleet(free_port()))
    lines: list[str] = []
    machines = LabMachines(tmp_path, nodes=fleet.nodes, lab=StandInLab(), log=lines.append)
    api = HcloudApi(machines, action_seconds=0.0, log=lines.append)
    headers = {"authorization": "Bearer lab-hcloud-token"}

    def create(name: str) -> dict[str, Any]:
        body = json.dumps({"name": name, "server_type": "cx22", "image": "debian-12"})
        status, _, payload = api.handle("POST", "/v1/servers", {}, headers, body.encode())
        assert status == 201, payload
        assert payload is not None
        return payload

    known = create("c1")
    stranger = create("stranger")
    api.advance()
    statuses = {action.command + ":" + str(action.server_id): action.status
                for action in api.actions.values()}
    assert statuses[f"start_server:{known['server']['id']}"] == "success"
    assert statuses[f"start_server:{stranger['server']['id']}"] == "error"
    assert any("has no lab VM behind it" in line for line in lines)
    # The fake still answers.
    status, _, _ = api.handle("GET", "/v1/servers", {}, headers, b"")
    assert status == 200


# -- the command's errors ------------------------------------------------------------------------

@pytest.fixture()
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "state"))
    _register()
    return CliRunner()


@pytest.mark.parametrize(("fleet_text", "provider", "message"), [
    (robot_fleet(8089), "nope", "fleet 'apilab' has no provider 'nope' (with an API fake: "
                                "robot); add [providers.nope]"),
    (robot_fleet(8089) + '\n[providers.vms]\ndriver = "lab"\n', "vms",
     "[providers.vms] uses driver 'lab', which has no API fake (lab VMs need no API"),
    (robot_fleet(8089).replace("http://127.0.0.1:8089", "https://robot-ws.your-server.de"),
     "robot", "[providers.robot] api_url https://robot-ws.your-server.de is not a loopback "
              "address (the fake serves only 127.0.0.1); set api_url = "
              "\"http://127.0.0.1:8089\" in [providers.robot]"),
    (robot_fleet(8089).replace("http://127.0.0.1:8089", "http://10.0.0.5:8089"), "robot",
     "is not a loopback address"),
    (ovh_fleet(8089).replace("/1.0", ""), "ovhlab",
     "the ovh fake answers at /1.0 (e.g. http://127.0.0.1:8089/1.0)"),
    (ovh_fleet(8089).replace('api_url = "http://127.0.0.1:8089/1.0"\n', ""), "ovhlab",
     "[providers.ovhlab] has no api_url, so its driver talks to the real API"),
])
def test_tables_the_command_cannot_serve_are_one_line_errors(
        runner: CliRunner, tmp_path: Path, fleet_text: str, provider: str,
        message: str) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(fleet_text)
    result = runner.invoke(cli, ["--fleet", str(path), "lab", "api", provider, "--record"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert "Traceback" not in result.output


# -- the command, driven by the real drivers --------------------------------------------------

class Command:
    """`clonefleet --fleet F [--json] lab api ...` in a subprocess, its stdout read line by
    line in a thread (so a test waits with a timeout)."""

    def __init__(self, tmp_path: Path, fleet: Path, *arguments: str) -> None:
        env = {**os.environ, "CLONEFLEET_STATE_DIR": str(tmp_path / "state")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "clonefleet", "--fleet", str(fleet), *arguments],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def line(self, timeout: float = 30.0) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            self.process.kill()
            _, err = self.process.communicate()
            raise AssertionError(f"no output within {timeout} s; stderr: {err}") from None

    def stop(self, how: signal.Signals = signal.SIGTERM) -> tuple[int, str]:
        self.process.send_signal(how)
        code = self.process.wait(timeout=30)
        assert self.process.stderr is not None
        return code, self.process.stderr.read()


def fleet_state(tmp_path: Path) -> Path:
    """The fleet's state folder, as the command's `CLONEFLEET_STATE_DIR` makes it."""
    state = tmp_path / "state" / "apilab"
    state.mkdir(parents=True, exist_ok=True)
    return state


@pytest.fixture()
def command(tmp_path: Path) -> Iterator[list[Command]]:
    started: list[Command] = []
    yield started
    for one in started:
        if one.process.poll() is None:
            one.process.kill()
            one.process.wait()


def test_robot_fake_serves_the_fleets_servers_to_the_driver(
        tmp_path: Path, command: list[Command], monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    path = tmp_path / "fleet.toml"
    path.write_text(robot_fleet(port))
    run = Command(tmp_path, path, "lab", "api", "robot", "--record", "--delay", "0.05")
    command.append(run)
    first = run.line()
    assert first.startswith(f"Hetzner Robot API fake for [providers.robot] at "
                            f"http://127.0.0.1:{port} ")
    exports = {}
    while (line := run.line()) != "servers:":
        assert line.startswith("export "), line
        name, _, value = line.removeprefix("export ").partition("=")
        exports[name] = value
    assert exports == {"LAB_ROBOT_USER": "robot", "HETZNER_ROBOT_PASSWORD": "robot-secret"}
    for name, value in exports.items():
        monkeypatch.setenv(name, value)

    fleet = load_fleet(path)
    provider = provider_for(fleet, fleet.node("r2"), fleet_state(tmp_path))
    assert sorted(info.server_id for info in provider.list()) == ["100001", "321"]
    info = provider.info(fleet.node("r2"))
    assert (info.server_id, info.status, info.ssh.host) == ("100001", "disk", "203.0.113.12")
    network = provider.network(fleet.node("r2"))
    assert (network.address, network.gateway, network.prefix) == ("203.0.113.12",
                                                                  "172.31.1.1", 32)

    code, err = run.stop(signal.SIGTERM)
    assert code == 0, err
    assert "Traceback" not in err


def test_ovh_fake_lets_the_driver_adopt_the_seeded_service(
        tmp_path: Path, command: list[Command], monkeypatch: pytest.MonkeyPatch) -> None:
    import ovh.client

    monkeypatch.setattr(ovh.client, "ENDPOINTS", dict(ovh.client.ENDPOINTS))
    port = free_port()
    path = tmp_path / "fleet.toml"
    path.write_text(ovh_fleet(port))
    run = Command(tmp_path, path, "--json", "lab", "api", "ovhlab", "--record",
                  "--delay", "0.05")
    command.append(run)
    summary = json.loads(run.line())
    assert summary["url"] == f"http://127.0.0.1:{port}/1.0"
    assert (summary["provider"], summary["driver"]) == ("ovhlab", "ovh")
    assert [server["server"] for server in summary["servers"]] == [
        "ns1001.ip-203-0-113.eu", "ns1002.ip-203-0-113.eu", "o3"]
    for name, value in summary["env"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("OVH_ENDPOINT", raising=False)

    fleet = load_fleet(path)
    provider = provider_for(fleet, fleet.node("o1"), fleet_state(tmp_path))
    info = provider.ensure_server(fleet.node("o1"))
    assert (info.server_id, info.status, info.ssh.host) == ("ns1001.ip-203-0-113.eu", "disk",
                                                           "203.0.113.21")

    code, err = run.stop(signal.SIGINT)
    assert code == 0, err
    assert "Traceback" not in err
    # Seeded lab servers stay off until a reboot task: the machine room was not asked.
    assert "power on" not in err


def test_hetzner_cloud_fake_creates_the_nodes_server_and_tells_the_machine_room(
        tmp_path: Path, command: list[Command], monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    path = tmp_path / "fleet.toml"
    path.write_text(cloud_fleet(port))
    run = Command(tmp_path, path, "--json", "lab", "api", "cloud", "--record",
                  "--delay", "0.05", "--token", "my-lab-token")
    command.append(run)
    summary = json.loads(run.line())
    assert summary["url"] == f"http://127.0.0.1:{port}/v1"
    assert summary["env"] == {"LAB_HCLOUD_TOKEN": "my-lab-token"}
    assert summary["servers"] == []
    monkeypatch.setenv("LAB_HCLOUD_TOKEN", "my-lab-token")

    fleet = load_fleet(path)
    provider = provider_for(fleet, fleet.node("c1"), fleet_state(tmp_path))
    info = provider.ensure_server(fleet.node("c1"))
    assert info.status == "disk" and info.server_id.isdigit()
    assert [server.server_id for server in provider.list()] == [info.server_id]

    code, err = run.stop(signal.SIGTERM)
    assert code == 0, err
    assert "Traceback" not in err
    assert f"machine {info.server_id}: created for c1 ({info.ssh.host})" in err
    assert f"machine {info.server_id}: power on into disk" in err
