"""Lab routes: API addresses of fake servers → where their lab VMs really answer."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from clonefleet.errors import ProviderError
from clonefleet.fakes.machines import LabMachines, MachineSpec
from clonefleet.inventory import Node, load_fleet
from clonefleet.providers import ProviderConfig, ServerInfo, SshAccess, provider_for
from clonefleet.providers.registry import DRIVERS, Driver
from clonefleet.providers.routes import LabRoutes, routes_path, update_routes

pytestmark = pytest.mark.unit


def test_routes_map_api_addresses_and_are_re_read_on_each_call(tmp_path: Path) -> None:
    path = tmp_path / "lab" / "routes.json"
    route = LabRoutes(path)
    api = SshAccess("203.0.113.10", 22, host_keys=("SHA256:abc",))
    # No route yet: refused, never sent to the public address the fake reported.
    with pytest.raises(ProviderError, match=r"no lab VM answers for 203\.0\.113\.10:22"):
        route(api)
    update_routes(path, add={"203.0.113.10:22": "127.0.0.1:40022"})
    assert route(api) == SshAccess("127.0.0.1", 40022, host_keys=("SHA256:abc",))
    path.write_text(json.dumps({"203.0.113.10:22": "127.0.0.1:40023"}))
    assert route(api).port == 40023
    with pytest.raises(ProviderError):
        route(SshAccess("203.0.113.99", 22))
    update_routes(path, remove=("203.0.113.10:22",))
    with pytest.raises(ProviderError):
        route(api)


class _Echo:
    """A driver that hands back the config it was created with."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config


def create(config: ProviderConfig, state_dir: Path, log: Callable[[str], None]) -> _Echo:
    return _Echo(config)


FLEET = """
[fleet]
name = "routes"
domain = "fleet.example.com"

[providers.cloud-lab]
driver = "echo"
lab_routes = true

[regions.fsn]
provider = "cloud-lab"
latitude = 50.47
longitude = 12.37

[nodes.c1]
region = "fsn"
disks = ["SER-1"]
ipv4 = "203.0.113.10"

[nodes.l1]
region = "fsn"
provider = "lab"
disks = ["SER-2"]
"""


def test_provider_for_uses_the_nodes_table_and_routes_through_the_state_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DRIVERS, "echo", Driver("echo", __name__, "test driver"))
    monkeypatch.setitem(sys.modules, __name__, sys.modules[__name__])
    (tmp_path / "fleet.toml").write_text(FLEET)
    fleet = load_fleet(tmp_path / "fleet.toml")
    state = tmp_path / "state"
    provider = provider_for(fleet, fleet.node("c1"), state)
    assert isinstance(provider, _Echo)
    assert provider.config.name == "cloud-lab" and provider.config.driver == "echo"
    update_routes(routes_path(state), add={"203.0.113.10:22": "127.0.0.1:40022",
                                           "203.0.113.10:tcp/8081": "127.0.0.1:40081"})
    assert provider.config.route(SshAccess("203.0.113.10", 22)) == SshAccess("127.0.0.1", 40022)
    assert provider.config.forwards("203.0.113.10") == {"tcp/8081": ("127.0.0.1", 40081)}
    lab = provider_for(fleet, fleet.node("l1"), state)
    assert type(lab).__name__ == "LabProvider"


class FakeLab:
    """LabProvider's bookkeeping without qemu: which VM was asked to do what."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, object]] = []
        self.status: dict[str, str] = {}
        self.ports = {"vm-a": (40022, 40222)}

    def _info(self, node: Node) -> ServerInfo:
        ssh, dropbear = self.ports[node.name]
        return ServerInfo(node=node.name, server_id=f"lab-{node.name}",
                          status=self.status.get(node.name, "off"),  # type: ignore[arg-type]
                          ssh=SshAccess("127.0.0.1", ssh), unlock=SshAccess("127.0.0.1", dropbear),
                          forwarded_ports={"udp/53": ("127.0.0.1", ssh + 53),
                                           "tcp/443": ("127.0.0.1", ssh + 443)})

    def ensure_server(self, node: Node) -> ServerInfo:
        self.calls.append(("ensure_server", node.name, node.disks))
        return self._info(node)

    def info(self, node: Node) -> ServerInfo:
        if node.name not in self.status:
            raise ProviderError(f"lab VM {node.name} does not exist")
        return self._info(node)

    def boot_rescue(self, node: Node, ssh_public_keys: list[str]) -> SshAccess:
        self.calls.append(("boot_rescue", node.name, tuple(ssh_public_keys)))
        self.status[node.name] = "rescue"
        return self._info(node).ssh

    def boot_disk(self, node: Node) -> None:
        self.calls.append(("boot_disk", node.name, None))
        self.status[node.name] = "disk"

    def power_off(self, node: Node) -> None:
        if node.name not in self.status:
            raise ProviderError(f"lab VM {node.name} does not exist")
        self.calls.append(("power_off", node.name, None))
        self.status[node.name] = "off"

    def delete(self, node: Node) -> None:
        self.calls.append(("delete", node.name, None))
        self.status.pop(node.name, None)


def test_lab_machines_boot_lab_vms_and_record_where_they_answer(tmp_path: Path) -> None:
    lab = FakeLab()
    spec = MachineSpec(vm="vm-a", disks=("SER-A", "SER-B"), public_ipv4="203.0.113.10",
                       memory_mb=3072)
    machines = LabMachines(tmp_path, {"4711": spec}, lab=lab)
    # The server exists from the start: its VM (off) and its routes, so the addresses a
    # driver records when it first sees the server already lead to the VM.
    assert lab.calls == [("ensure_server", "vm-a", ("SER-A", "SER-B"))]
    routes = json.loads((tmp_path / "lab" / "routes.json").read_text())
    # The VM's other forwards too (DNS, HTTPS), keyed by protocol: a driver reports them as
    # the server's forwarded ports, as the lab driver does for its own VMs.
    assert routes == {"203.0.113.10:22": "127.0.0.1:40022",
                      "203.0.113.10:2222": "127.0.0.1:40222",
                      "203.0.113.10:udp/53": "127.0.0.1:40075",
                      "203.0.113.10:tcp/443": "127.0.0.1:40465"}
    assert machines.running("4711") is None
    machines.power_on("4711", "rescue", ["ssh-ed25519 AAAA op"])
    assert lab.calls[-2:] == [("ensure_server", "vm-a", ("SER-A", "SER-B")),
                              ("boot_rescue", "vm-a", ("ssh-ed25519 AAAA op",))]
    assert machines.running("4711") == "rescue"
    route = LabRoutes(routes_path(tmp_path))
    assert route(SshAccess("203.0.113.10", 2222)) == SshAccess("127.0.0.1", 40222)
    assert route.forwards("203.0.113.10") == {"udp/53": ("127.0.0.1", 40075),
                                              "tcp/443": ("127.0.0.1", 40465)}
    assert route.forwards("203.0.113.1") == {}  # another server's (or none): nothing

    machines.power_on("4711", "disk", [])
    assert lab.calls[-1] == ("boot_disk", "vm-a", None)
    assert machines.running("4711") == "disk"
    machines.power_off("4711")
    assert lab.calls[-1] == ("power_off", "vm-a", None)
    assert machines.running("4711") is None

    machines.delete("4711")
    assert lab.calls[-1] == ("delete", "vm-a", None)
    assert json.loads((tmp_path / "lab" / "routes.json").read_text()) == {}


def test_lab_machines_refuse_a_server_without_a_vm_in_one_line(tmp_path: Path) -> None:
    machines = LabMachines(tmp_path, lab=FakeLab())
    with pytest.raises(ProviderError, match="fake server 9 has no lab VM behind it"):
        machines.power_on("9", "rescue", [])
    machines.register("9", MachineSpec(vm="vm-a", disks=("S",)))
    machines.power_off("9")  # created but never started: already off, nothing to do
    machines.power_on("9", "disk", [])  # no public address: nothing routed
    assert not (tmp_path / "lab" / "routes.json").exists()


def test_machine_spec_from_a_node_uses_its_public_address() -> None:
    node = Node(name="r1", region="fsn", provider="robot", disks=("A",), ipv4="203.0.113.5",
                memory_mb=4096, disk_size_gb=10)
    spec = MachineSpec.for_node(node)
    assert spec == MachineSpec("r1", ("A",), "203.0.113.5", 4096, 10)
    assert spec.node().disks == ("A",) and spec.node().provider == "lab"
