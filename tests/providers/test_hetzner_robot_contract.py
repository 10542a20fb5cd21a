"""The hetzner-robot driver against the Robot fake, with a recording machine room.

The rescue system's SSH is a small paramiko server on loopback: the config's `route` sends
the server's public address there, as `LabMachines` routes do for lab VMs.
"""

from __future__ import annotations

import dataclasses
import io
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from clonefleet.errors import ClonefleetError, ConfigError, HostKeyMismatchError, ProviderError
from clonefleet.fakes.machines import BootMode, RecordingMachines
from clonefleet.fakes.robot import RobotFake, make_server
from clonefleet.inventory import Node
from clonefleet.inventory.model import StaticNetwork
from clonefleet.providers.base import ProviderConfig, SshAccess
from clonefleet.providers.hetzner_robot import HetznerRobotProvider, RescueArmed
from clonefleet.providers.robot_client import md5_fingerprint
from clonefleet.retry import RetryPolicy
from clonefleet.ssh import generate_ed25519, key_fingerprints

pytestmark = pytest.mark.integration

FAST = RetryPolicy(first=0.01, cap=0.02, factor=1.0, jitter=0.0)
ENV = {"HETZNER_ROBOT_USER": "robot", "HETZNER_ROBOT_PASSWORD": "robot-secret"}
OPERATOR = generate_ed25519("operator")


class KeyMachines(RecordingMachines):
    def __init__(self) -> None:
        super().__init__()
        self.keys: dict[str, list[str]] = {}

    def power_on(self, server: str, mode: BootMode, ssh_keys: list[str]) -> None:
        self.keys[server] = list(ssh_keys)
        super().power_on(server, mode, ssh_keys)


class SshStub:
    """Answers SSH on loopback with a fixed Ed25519 host key (key exchange only)."""

    def __init__(self) -> None:
        pair = generate_ed25519()
        self.key = paramiko.Ed25519Key.from_private_key(io.StringIO(pair.private_openssh))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def fingerprint(self) -> str:
        return key_fingerprints(self.key.asbytes())[0]

    def _accept(self) -> None:
        while self.running:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        transport = paramiko.Transport(connection)
        transport.add_server_key(self.key)
        try:
            transport.start_server(server=paramiko.ServerInterface())
            transport.accept(timeout=2)
        except (paramiko.SSHException, OSError, EOFError):
            pass
        finally:
            transport.close()

    def close(self) -> None:
        self.running = False
        self.listener.close()


@dataclasses.dataclass(frozen=True)
class SeamNode(Node):
    """A node as the seam's loader builds it, with the driver's own keys."""

    provider_settings: dict[str, Any] = dataclasses.field(default_factory=dict)


def node(reference: int | str = 321, **changes: Any) -> Node:
    return SeamNode(name="fsn-robot-1", region="fsn", provider="robot", disks=("S1",),
                    provider_settings={"robot_server": reference}, **changes)


@pytest.fixture
def machines() -> KeyMachines:
    return KeyMachines()


@pytest.fixture
def fake(machines: KeyMachines) -> Iterator[RobotFake]:
    server = make_server(machines, boot_delay=0.01).start()
    server.add_server(321, "fsn-robot-1", "203.0.113.70", "2a01:4f8:111:4221::")
    server.add_server(322, "fsn-robot-2", "203.0.113.71", "2a01:4f8:111:4222::")
    yield server
    server.shutdown()


@pytest.fixture
def ssh() -> Iterator[SshStub]:
    stub = SshStub()
    yield stub
    stub.close()


@pytest.fixture
def logs() -> list[str]:
    return []


def make_driver(fake: RobotFake, ssh: SshStub | None, tmp_path: Path, logs: list[str], *,
                env: dict[str, str] | None = None, **settings: Any) -> HetznerRobotProvider:
    def route(access: SshAccess) -> SshAccess:
        if ssh is None:
            return access
        return dataclasses.replace(access, host="127.0.0.1", port=ssh.port)

    config = ProviderConfig(name="robot", driver="hetzner-robot",
                            settings={"api_url": fake.url, **settings}, route=route,
                            forwards=lambda host: {"udp/53": (host, 40053)})
    return HetznerRobotProvider(config, tmp_path, logs.append, env=ENV if env is None else env,
                                boot_timeout=3.0, in_process_timeout=0.3, poll=FAST,
                                retry_timeout=0.3, retry_policy=FAST, probe_patience=2.0)


@pytest.fixture
def driver(fake: RobotFake, ssh: SshStub, tmp_path: Path,
           logs: list[str]) -> HetznerRobotProvider:
    return make_driver(fake, ssh, tmp_path, logs)


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and "Traceback" not in text
    assert isinstance(error, ClonefleetError)
    return text


def calls(fake: RobotFake, method: str, path: str) -> list[list[tuple[str, str]]]:
    return [form for seen_method, seen_path, form in fake.api.requests
            if (seen_method, seen_path) == (method, path)]


# -- adopting -------------------------------------------------------------------------------


def test_adopts_a_server_by_number_and_routes_its_ssh(driver: HetznerRobotProvider,
                                                      ssh: SshStub) -> None:
    info = driver.ensure_server(node(321))
    assert (info.server_id, info.status) == ("321", "disk")
    assert info.ssh == SshAccess("127.0.0.1", ssh.port)
    assert info.details["name"] == "fsn-robot-1" and info.details["rescue"] == "off"


def test_adopts_a_server_by_name(driver: HetznerRobotProvider, fake: RobotFake) -> None:
    assert driver.ensure_server(node("fsn-robot-2")).server_id == "322"
    assert calls(fake, "GET", "/server")  # found by listing, not guessed


def test_falls_back_to_server_id_without_the_seam_key(driver: HetznerRobotProvider) -> None:
    plain = Node(name="n", region="fsn", provider="robot", disks=("S1",), server_id="322")
    assert driver.ensure_server(plain).server_id == "322"


@pytest.mark.parametrize("reference", [999, "no-such-box"])
def test_unknown_server_is_one_line_listing_the_accounts_servers(
        driver: HetznerRobotProvider, reference: int | str) -> None:
    with pytest.raises(ProviderError) as caught:
        driver.ensure_server(node(reference))
    text = one_line(caught.value)
    assert "fsn-robot-1" in text and "321 (fsn-robot-1), 322 (fsn-robot-2)" in text


def test_node_without_a_server_reference_says_which_key_to_set(
        driver: HetznerRobotProvider) -> None:
    with pytest.raises(ConfigError, match="robot_server"):
        driver.ensure_server(node(""))


# -- rescue ---------------------------------------------------------------------------------


def test_boot_rescue_stores_the_key_arms_resets_and_boots_rescue_with_it(
        driver: HetznerRobotProvider, fake: RobotFake, machines: KeyMachines,
        ssh: SshStub) -> None:
    access = driver.boot_rescue(node(), [OPERATOR.public_line])
    fingerprint = md5_fingerprint(OPERATOR.public_line)
    assert calls(fake, "POST", "/key")[0][1] == ("data", OPERATOR.public_line)
    assert calls(fake, "POST", "/boot/321/rescue") == [[("os", "linux"),
                                                        ("authorized_key[]", fingerprint)]]
    assert calls(fake, "POST", "/reset/321") == [[("type", "hw")]]
    assert machines.calls == [("power_on", "321", "rescue")]
    assert machines.keys["321"] == [" ".join(OPERATOR.public_line.split()[:2])]
    assert (access.host, access.port) == ("127.0.0.1", ssh.port)
    info = driver.info(node())
    assert info.status == "rescue"
    # Lab fakes' other forwarded ports: the ones for the server's public IPv4.
    assert info.forwarded_ports == {"udp/53": ("203.0.113.70", 40053)}
    assert fake.api.servers[321].rescue is None  # consumed by that boot


def test_boot_rescue_reuses_a_key_already_in_the_account(
        driver: HetznerRobotProvider, fake: RobotFake) -> None:
    fake.add_key("mine", OPERATOR.public_line)
    driver.boot_rescue(node(), [OPERATOR.public_line])
    assert calls(fake, "POST", "/key") == []


def test_published_rescue_host_keys_are_pinned(driver: HetznerRobotProvider,
                                               fake: RobotFake, ssh: SshStub,
                                               logs: list[str]) -> None:
    fake.api.servers[321].rescue_host_keys = ("SHA256:someotherkeyfirst", ssh.fingerprint)
    access = driver.boot_rescue(node(), [OPERATOR.public_line])
    # SshAccess carries them to the installer, which pins the rescue connection to them.
    assert access.host_keys == ("SHA256:someotherkeyfirst", ssh.fingerprint)
    # ... and wait_ready checks them again for whoever waits on that access later.
    driver.wait_ready(access, node(), 2.0, "rescue again", host_keys=(ssh.fingerprint,))
    assert any("pinning" in line for line in logs)
    assert not any("first use" in line for line in logs)


def test_rescue_presenting_another_host_key_is_refused(driver: HetznerRobotProvider,
                                                       fake: RobotFake) -> None:
    fake.api.servers[321].rescue_host_keys = ("SHA256:AAAAnotthekeythestubpresents",)
    with pytest.raises(HostKeyMismatchError) as caught:
        driver.boot_rescue(node(), [OPERATOR.public_line])
    assert "SHA256:AAAAnotthekeythestubpresents" in one_line(caught.value)


def test_without_published_host_keys_the_log_says_trusted_on_first_use(
        driver: HetznerRobotProvider, logs: list[str]) -> None:
    driver.boot_rescue(node(), [OPERATOR.public_line])
    assert any("trusting the rescue system's key on first use" in line for line in logs)


def test_a_stale_activation_is_replaced_by_one_with_the_operator_key(
        driver: HetznerRobotProvider, fake: RobotFake, machines: KeyMachines) -> None:
    fake.api.servers[321].rescue = {"os": "linux", "arch": 64, "active": True,
                                    "password": "x", "authorized_key": [], "host_key": [],
                                    "boot_time": None}
    assert driver.info(node()).status == "starting"
    driver.boot_rescue(node(), [OPERATOR.public_line])
    assert len(calls(fake, "DELETE", "/boot/321/rescue")) == 1
    assert machines.keys["321"]


def test_boot_disk_disarms_rescue_and_boots_the_disk(driver: HetznerRobotProvider,
                                                     fake: RobotFake,
                                                     machines: KeyMachines) -> None:
    fake.add_key("mine", OPERATOR.public_line)
    driver.client.activate_rescue(321, [md5_fingerprint(OPERATOR.public_line)])
    driver.boot_disk(node())
    assert len(calls(fake, "DELETE", "/boot/321/rescue")) == 1
    assert machines.calls == [("power_on", "321", "disk")]
    assert driver.info(node()).status == "disk"


# -- failures -------------------------------------------------------------------------------


def test_rate_limit_is_retried_then_succeeds(driver: HetznerRobotProvider,
                                             fake: RobotFake, logs: list[str]) -> None:
    fake.inject("rate_limit", times=2)
    assert driver.ensure_server(node()).server_id == "321"
    assert len(calls(fake, "GET", "/server/321")) == 3
    assert sum("RATE_LIMIT" in line or "rate limit" in line for line in logs) == 2


def test_rate_limit_exhausted_is_one_line_saying_to_wait(driver: HetznerRobotProvider,
                                                         fake: RobotFake) -> None:
    fake.inject("rate_limit", times=1000)
    with pytest.raises(ProviderError) as caught:
        driver.ensure_server(node())
    text = one_line(caught.value)
    assert "rate limit" in text and "200 requests per 3600 s" in text and "wait" in text


def test_server_errors_are_retried(driver: HetznerRobotProvider, fake: RobotFake) -> None:
    fake.inject("server_error", times=2)
    assert driver.ensure_server(node()).status == "disk"


def test_bad_credentials_are_one_line_and_never_retried(fake: RobotFake, tmp_path: Path,
                                                        logs: list[str]) -> None:
    driver = make_driver(fake, None, tmp_path, logs,
                         env={**ENV, "HETZNER_ROBOT_PASSWORD": "wrong"})
    with pytest.raises(ProviderError) as caught:
        driver.ensure_server(node())
    text = one_line(caught.value)
    assert "$HETZNER_ROBOT_USER/$HETZNER_ROBOT_PASSWORD" in text and "401" in text
    assert len(fake.api.requests) == 1


def test_missing_credential_variables_are_named(fake: RobotFake, tmp_path: Path,
                                                logs: list[str]) -> None:
    driver = make_driver(fake, None, tmp_path, logs, env={}, user_env="MY_ROBOT_USER")
    with pytest.raises(ConfigError) as caught:
        driver.ensure_server(node())
    assert "MY_ROBOT_USER and HETZNER_ROBOT_PASSWORD" in one_line(caught.value)
    assert fake.api.requests == []


def test_delete_is_refused(driver: HetznerRobotProvider, fake: RobotFake) -> None:
    with pytest.raises(ProviderError, match="clonefleet never cancels one"):
        driver.delete(node())
    assert fake.api.requests == []


def test_reset_failure_after_arming_disarms_and_says_so(driver: HetznerRobotProvider,
                                                         fake: RobotFake,
                                                         machines: KeyMachines) -> None:
    fake.inject("reset_failed", times=1000)
    with pytest.raises(ProviderError) as caught:
        driver.boot_rescue(node(), [OPERATOR.public_line])
    text = one_line(caught.value)
    assert "RESET_FAILED" in text and "disarmed again" in text and "321" in text
    assert fake.api.servers[321].rescue is None
    assert machines.calls == []


def test_reset_failure_with_disarm_failing_names_the_armed_server_and_the_fix(
        driver: HetznerRobotProvider, fake: RobotFake) -> None:
    fake.inject("reset_failed", times=1000)
    fake.inject("boot_deactivation_failed", times=1000)
    with pytest.raises(RescueArmed) as caught:
        driver.boot_rescue(node(), [OPERATOR.public_line])
    text = one_line(caught.value)
    assert "Robot server 321 (203.0.113.70) is left with rescue ARMED" in text
    assert "DELETE /boot/321/rescue" in text and "clonefleet provision fsn-robot-1" in text
    assert fake.api.servers[321].rescue is not None


def test_a_reset_that_never_boots_times_out_and_disarms(driver: HetznerRobotProvider,
                                                        fake: RobotFake) -> None:
    fake.inject("no_boot")
    driver.boot_timeout = 0.3
    with pytest.raises(ProviderError) as caught:
        driver.boot_rescue(node(), [OPERATOR.public_line])
    text = one_line(caught.value)
    assert "to boot rescue" in text and "rescue armed" in text and "disarmed again" in text
    assert fake.api.servers[321].rescue is None


def test_rescue_ssh_that_never_answers_is_one_line(fake: RobotFake, tmp_path: Path,
                                                   logs: list[str]) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    driver = make_driver(fake, None, tmp_path, logs)
    driver.config = dataclasses.replace(
        driver.config, route=lambda access: dataclasses.replace(access, host="127.0.0.1",
                                                                port=port))
    driver.boot_timeout = 0.3
    with pytest.raises(ProviderError) as caught:
        driver.boot_rescue(node(), [OPERATOR.public_line])
    assert "SSH does not answer" in one_line(caught.value)


def test_server_in_process_is_waited_for(driver: HetznerRobotProvider, fake: RobotFake,
                                         machines: KeyMachines) -> None:
    fake.inject("in_process", times=2)
    driver.boot_rescue(node(), [OPERATOR.public_line])
    assert machines.calls == [("power_on", "321", "rescue")]


def test_server_staying_in_process_is_one_line_and_nothing_is_armed(
        driver: HetznerRobotProvider, fake: RobotFake) -> None:
    fake.set_status(321, "in process")
    assert driver.info(node()).status == "starting"
    with pytest.raises(ProviderError) as caught:
        driver.boot_rescue(node(), [OPERATOR.public_line])
    assert "wait until Robot shows it ready" in one_line(caught.value)
    assert calls(fake, "POST", "/boot/321/rescue") == []


def test_reset_type_the_server_lacks_is_refused_before_arming(
        fake: RobotFake, ssh: SshStub, tmp_path: Path, logs: list[str]) -> None:
    driver = make_driver(fake, ssh, tmp_path, logs, reset_type="power")
    with pytest.raises(ProviderError) as caught:
        driver.boot_rescue(node(), [OPERATOR.public_line])
    assert "available: sw, hw, man" in one_line(caught.value)
    assert calls(fake, "POST", "/boot/321/rescue") == []


def test_power_off_needs_power_long(driver: HetznerRobotProvider) -> None:
    with pytest.raises(ProviderError, match="cannot be powered off"):
        driver.power_off(node())


# -- network --------------------------------------------------------------------------------


def test_network_is_a_slash_32_with_robots_off_link_gateway_and_ipv6(
        driver: HetznerRobotProvider) -> None:
    network = driver.network(node())
    assert (network.mode, network.address, network.prefix) == ("static", "203.0.113.70", 32)
    assert (network.gateway, network.onlink_gateway) == ("203.0.113.65", True)
    assert network.kernel_ip_arg() == "ip=203.0.113.70::203.0.113.65:255.255.255.255::eth0:off"
    assert (network.ipv6_address, network.ipv6_gateway) == ("2a01:4f8:111:4221::2/64",
                                                            "fe80::1")


def test_network_from_the_fleet_file_wins(driver: HetznerRobotProvider) -> None:
    lab = node(network=StaticNetwork(address="10.0.2.15", prefix=32, gateway="10.0.2.2"))
    network = driver.network(lab)
    assert (network.address, network.gateway, network.onlink_gateway) == ("10.0.2.15",
                                                                          "10.0.2.2", True)
    on_link = node(network=StaticNetwork(address="10.0.2.15", prefix=24, gateway="10.0.2.2"))
    assert driver.network(on_link).onlink_gateway is False


def test_list_maps_robot_status(driver: HetznerRobotProvider, fake: RobotFake) -> None:
    fake.set_status(322, "in process")
    statuses = {info.server_id: info.status for info in driver.list()}
    assert statuses == {"321": "disk", "322": "starting"}


# -- clonefleet power on|off|reset ----------------------------------------------------------


def test_power_on_after_power_off_presses_the_power_button(
        fake: RobotFake, machines: KeyMachines, ssh: SshStub, tmp_path: Path,
        logs: list[str]) -> None:
    fake.add_server(323, "fsn-robot-3", "203.0.113.72",
                    reset_types=("sw", "hw", "power", "power_long", "man"))
    driver = make_driver(fake, ssh, tmp_path, logs)
    robot_node = node(323)

    driver.power_off(robot_node)
    assert driver.info(robot_node).status == "off"
    assert driver.power_on(robot_node) is True

    assert [dict(form)["type"] for form in calls(fake, "POST", "/reset/323")] == \
        ["power_long", "power"]
    assert driver.info(robot_node).status == "disk"


def test_power_on_leaves_a_server_alone_whose_ssh_answers(
        driver: HetznerRobotProvider, fake: RobotFake) -> None:
    # The stub answers SSH: the server is on, and a power-button press would shut it down.
    assert driver.power_on(node()) is False
    assert calls(fake, "POST", "/reset/321") == []


def test_power_on_of_a_silent_server_not_known_off_resets_it_and_disarms_rescue(
        fake: RobotFake, tmp_path: Path, logs: list[str]) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: neither sshd nor Dropbear answers
    config = ProviderConfig(name="robot", driver="hetzner-robot",
                            settings={"api_url": fake.url},
                            route=lambda access: SshAccess("127.0.0.1", port))
    driver = HetznerRobotProvider(config, tmp_path, logs.append, env=ENV, boot_timeout=3.0,
                                  in_process_timeout=0.3, poll=FAST, retry_timeout=0.3,
                                  retry_policy=FAST, probe_patience=0.5)
    fake.api.servers[321].rescue = {"active": True, "authorized_key": []}

    assert driver.power_on(node()) is True

    assert [dict(form)["type"] for form in calls(fake, "POST", "/reset/321")] == ["hw"]
    assert calls(fake, "DELETE", "/boot/321/rescue") == [[]]
