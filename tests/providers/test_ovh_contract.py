"""The ovh driver against the OVH API fake, with real python-ovh signing.

The fake's servers run on RecordingMachines; the "rescue SSH" the driver waits for is a
banner server on loopback reached through `ProviderConfig.route`, as lab routes do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ovh.client
import ovh.config
import pytest

from clonefleet.errors import ConfigError, ProviderError
from clonefleet.fakes.machines import RecordingMachines
from clonefleet.fakes.ovh import OvhFake, make_server
from clonefleet.inventory import Node
from clonefleet.providers.base import ProviderConfig, SshAccess
from clonefleet.providers.ovh_dedicated import OvhDedicatedProvider
from clonefleet.retry import RetryPolicy, TimedOut

pytestmark = pytest.mark.integration

SERVICE = "ns1234567.ip-203-0-113.eu"
IP = "203.0.113.10"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOperatorKeyForTests operator@clonefleet"
FAST = RetryPolicy(first=0.01, cap=0.05, factor=2.0, jitter=0.0)


class BannerServer:
    """Answers every connection with an SSH banner, like the rescue system's sshd."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                connection.sendall(b"SSH-2.0-OpenSSH_9.2p1 rescue\r\n")

    def close(self) -> None:
        # A blocked accept() keeps a merely closed listener alive on Linux: shut it down.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(timeout=5)


@dataclasses.dataclass
class Lab:
    fake: OvhFake
    machines: RecordingMachines
    provider: OvhDedicatedProvider
    node: Node
    banner: BannerServer
    logs: list[str]

    def rescue_id(self) -> int:
        server = self.fake.server(SERVICE)
        return next(boot for boot, (kind, kernel, _) in server.boots.items()
                    if kind == "rescue" and kernel == "rescue-customer")

    def disk_id(self) -> int:
        return self.fake.server(SERVICE).boot_ids("harddisk")[0]

    def calls(self) -> list[tuple[str, str, Any]]:
        return [(method, path, body) for method, path, body in self.fake.requests
                if method != "GET"]


def make_node(service: str = SERVICE, **extra: Any) -> Node:
    """A node naming its server by `service_name` once the seam's provider_settings exist,
    by the generic server_id until then."""
    names = {field.name for field in dataclasses.fields(Node)}
    if "provider_settings" in names:
        extra["provider_settings"] = {"service_name": service}
    else:
        extra["server_id"] = service
    return Node(name="ovh1", region="gra", provider="ovh-lab", disks=("disk-a",), **extra)


def make_provider(fake: OvhFake, banner: BannerServer, logs: list[str], tmp_path: Path,
                  name: str = "ovh-lab", **settings: Any) -> OvhDedicatedProvider:
    def route(access: SshAccess) -> SshAccess:
        return SshAccess("127.0.0.1", banner.port) if access.port == 22 else access

    config = ProviderConfig(name=name, driver="ovh",
                            settings={"api_url": fake.url, **settings}, route=route,
                            forwards=lambda host: {"tcp/443": (host, 40443)})
    return OvhDedicatedProvider(config, tmp_path, logs.append, api_timeout=3.0,
                                api_policy=FAST, task_timeout=5.0, poll=FAST,
                                ssh_timeout=3.0, probe_patience=1.0)


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ovh.config, "CONFIG_PATH", [])  # no ~/.ovh.conf from this machine
    monkeypatch.setenv("OVH_APPLICATION_KEY", "lab-application-key")
    monkeypatch.setenv("OVH_APPLICATION_SECRET", "lab-application-secret")
    monkeypatch.setenv("OVH_CONSUMER_KEY", "lab-consumer-key")


@pytest.fixture
def lab(credentials: None, tmp_path: Path) -> Iterator[Lab]:
    machines = RecordingMachines()
    fake = make_server(machines, task_step=0.02).start()
    fake.add_server(SERVICE, IP)
    banner = BannerServer()
    logs: list[str] = []
    try:
        yield Lab(fake, machines, make_provider(fake, banner, logs, tmp_path), make_node(),
                  banner, logs)
    finally:
        fake.shutdown()
        banner.close()


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text, text
    return text


# -- adopting --------------------------------------------------------------------------------


def test_adopts_the_ordered_server_by_service_name_without_changing_it(lab: Lab) -> None:
    info = lab.provider.ensure_server(lab.node)

    assert info.server_id == SERVICE
    assert info.status == "disk"
    assert info.ssh == SshAccess("127.0.0.1", lab.banner.port)  # through config.route
    assert info.unlock == SshAccess(IP, 2222)
    assert info.forwarded_ports == {"tcp/443": (IP, 40443)}  # for the server's own IP
    assert info.details["ip"] == IP
    assert lab.calls() == []  # adopting reads only: no PUT, no reboot


def test_an_unknown_service_name_names_it_and_the_servers_the_account_has(lab: Lab) -> None:
    with pytest.raises(ProviderError) as caught:
        lab.provider.ensure_server(make_node("ns9.ip-198-51-100.eu"))

    text = one_line(caught.value)
    assert "ns9.ip-198-51-100.eu" in text and SERVICE in text
    assert "service_name" in text


def test_info_reports_missing_rescue_and_disk_from_the_netboot(lab: Lab) -> None:
    assert lab.provider.info(make_node("ns9.ip-198-51-100.eu")).status == "missing"
    assert lab.provider.info(lab.node).status == "disk"
    lab.fake.server(SERVICE).boot_id = lab.rescue_id()
    assert lab.provider.info(lab.node).status == "rescue"


def test_the_api_url_is_registered_as_a_python_ovh_endpoint_named_after_the_table(
        lab: Lab, tmp_path: Path) -> None:
    assert lab.provider.endpoint == "ovh-lab"
    assert ovh.client.ENDPOINTS["ovh-lab"] == lab.fake.url

    with pytest.raises(ConfigError) as caught:
        make_provider(lab.fake, lab.banner, [], tmp_path, name="ovh-eu")
    assert "another name" in one_line(caught.value)
    assert ovh.client.ENDPOINTS["ovh-eu"] == "https://eu.api.ovh.com/1.0"


# -- rescue and disk -------------------------------------------------------------------------


def test_rescue_boot_survives_the_task_flap_and_sets_the_disk_netboot_back(lab: Lab) -> None:
    lab.fake.inject("task_404")
    lab.fake.inject("task_500")

    access = lab.provider.boot_rescue(lab.node, [KEY])

    assert access == SshAccess("127.0.0.1", lab.banner.port)
    assert ("power_on", SERVICE, "rescue") in lab.machines.calls
    calls = lab.calls()
    assert calls[0] == ("PUT", f"/dedicated/server/{SERVICE}",
                        {"bootId": lab.rescue_id(), "rescueSshKey": KEY})
    assert calls[1] == ("POST", f"/dedicated/server/{SERVICE}/reboot", None)
    assert calls[2] == ("PUT", f"/dedicated/server/{SERVICE}", {"bootId": lab.disk_id()})
    assert len(calls) == 3
    assert lab.fake.failures == {"task_404": 0, "task_500": 0}  # both flaps were seen
    # The rescue still runs, but the next reboot (the install's) boots the disk.
    assert lab.fake.boot_type(SERVICE) == "harddisk"
    assert lab.machines.running(SERVICE) == "rescue"


def test_the_customer_rescue_is_chosen_over_the_legacy_and_windows_ones(lab: Lab) -> None:
    rescue = lab.provider.rescue_boot_id(SERVICE)

    server = lab.fake.server(SERVICE)
    assert server.boots[rescue][:2] == ("rescue", "rescue-customer")
    assert len(server.boot_ids("rescue")) == 3


def test_boot_disk_sets_the_disk_netboot_before_it_reboots(lab: Lab) -> None:
    lab.fake.server(SERVICE).boot_id = lab.rescue_id()  # as a crash mid-rescue leaves it

    lab.provider.boot_disk(lab.node)

    calls = lab.calls()
    assert calls == [("PUT", f"/dedicated/server/{SERVICE}", {"bootId": lab.disk_id()}),
                     ("POST", f"/dedicated/server/{SERVICE}/reboot", None)]
    assert lab.machines.calls[-1] == ("power_on", SERVICE, "disk")


def test_boot_disk_does_not_touch_a_netboot_already_on_the_disk(lab: Lab) -> None:
    lab.provider.boot_disk(lab.node)

    assert lab.calls() == [("POST", f"/dedicated/server/{SERVICE}/reboot", None)]
    assert lab.machines.running(SERVICE) == "disk"


def test_a_failed_rescue_task_is_one_line_with_the_recovery_and_the_disk_netboot_back(
        lab: Lab) -> None:
    lab.fake.inject("task_error")

    with pytest.raises(ProviderError) as caught:
        lab.provider.boot_rescue(lab.node, [KEY])

    text = one_line(caught.value)
    assert SERVICE in text and "ovhError" in text
    assert "back on the hard disk" in text
    assert "clonefleet provision ovh1" in text
    assert lab.fake.boot_type(SERVICE) == "harddisk"
    assert ("power_on", SERVICE, "rescue") not in lab.machines.calls


def test_when_the_disk_netboot_cannot_be_restored_the_error_says_it_is_left_in_rescue(
        lab: Lab) -> None:
    lab.fake.inject("task_error")
    follow = lab.provider._wait_task

    def follow_then_break_the_api(service: str, task_id: int, what: str) -> None:
        try:
            follow(service, task_id, what)
        finally:
            lab.fake.inject("server_error", 10_000)  # every later call fails

    lab.provider._wait_task = follow_then_break_the_api  # type: ignore[method-assign]
    lab.provider.api_timeout = 0.3

    with pytest.raises(ProviderError) as caught:
        lab.provider.boot_rescue(lab.node, [KEY])

    text = one_line(caught.value)
    assert f"OVH server {SERVICE} is LEFT NETBOOTING RESCUE" in text
    assert "'Boot from the hard disk'" in text
    assert f"PUT /dedicated/server/{SERVICE}" in text
    assert "clonefleet provision ovh1" in text
    assert lab.fake.boot_type(SERVICE) == "rescue"


def test_a_refused_reboot_restores_the_disk_netboot(lab: Lab) -> None:
    lab.fake.inject("reboot_refused")

    with pytest.raises(ProviderError) as caught:
        lab.provider.boot_rescue(lab.node, [KEY])

    text = one_line(caught.value)
    assert "already in progress" in text and SERVICE in text
    assert lab.fake.boot_type(SERVICE) == "harddisk"


def test_rescue_ssh_that_never_answers_times_out_and_restores_the_disk_netboot(
        lab: Lab) -> None:
    lab.banner.close()
    lab.provider.ssh_timeout = 0.3

    with pytest.raises(ProviderError) as caught:
        lab.provider.boot_rescue(lab.node, [KEY])

    text = one_line(caught.value)
    assert "rescue system ssh" in text and "not done after" in text
    assert lab.fake.boot_type(SERVICE) == "harddisk"


def test_wait_ready_gives_up_with_what_it_waited_for(lab: Lab) -> None:
    lab.banner.close()

    with pytest.raises(TimedOut) as caught:
        lab.provider.wait_ready(SshAccess("127.0.0.1", lab.banner.port), lab.node, 0.2,
                                "sshd")
    assert "ovh1: sshd" in one_line(caught.value)


# -- credentials and transient failures --------------------------------------------------


def test_a_wrong_application_secret_is_one_line_about_the_signature(
        lab: Lab, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OVH_APPLICATION_SECRET", "not-the-secret")
    provider = make_provider(lab.fake, lab.banner, [], tmp_path)

    with pytest.raises(ProviderError) as caught:
        provider.ensure_server(lab.node)

    text = one_line(caught.value)
    assert "Invalid signature" in text and "OVH_APPLICATION_SECRET" in text
    assert SERVICE in text


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("OVH_APPLICATION_KEY", "unknown-key", "This application key is invalid"),
    ("OVH_CONSUMER_KEY", "unknown-consumer", "This credential does not exist"),
])
def test_bad_credentials_are_one_line_naming_the_fix(
        lab: Lab, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str,
        value: str, expected: str) -> None:
    monkeypatch.setenv(variable, value)
    provider = make_provider(lab.fake, lab.banner, [], tmp_path)

    with pytest.raises(ProviderError) as caught:
        provider.ensure_server(lab.node)

    text = one_line(caught.value)
    assert expected in text
    assert variable in text
    assert "createToken" in text
    assert lab.fake.requests == []  # nothing got through


def test_a_consumer_key_not_validated_yet_says_to_create_a_new_one(
        lab: Lab, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    lab.fake.add_credential("lab-application-key", "lab-application-secret", "pending-ck",
                            state="pendingValidation")
    monkeypatch.setenv("OVH_CONSUMER_KEY", "pending-ck")

    with pytest.raises(ProviderError) as caught:
        make_provider(lab.fake, lab.banner, [], tmp_path).ensure_server(lab.node)

    assert "This credential is not valid" in one_line(caught.value)


def test_missing_access_rules_name_the_rules_to_grant(
        lab: Lab, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    lab.fake.add_credential("lab-application-key", "lab-application-secret", "read-only",
                            rules=[("GET", "/me")])
    monkeypatch.setenv("OVH_CONSUMER_KEY", "read-only")

    with pytest.raises(ProviderError) as caught:
        make_provider(lab.fake, lab.banner, [], tmp_path).ensure_server(lab.node)

    text = one_line(caught.value)
    assert "This call has not been granted" in text and "/dedicated/server/*" in text


def test_missing_credentials_name_what_is_missing_and_where_to_create_it(
        lab: Lab, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OVH_CONSUMER_KEY")
    monkeypatch.delenv("OVH_APPLICATION_SECRET")
    provider = make_provider(lab.fake, lab.banner, [], tmp_path)

    with pytest.raises(ProviderError) as caught:
        provider.ensure_server(lab.node)

    text = one_line(caught.value)
    assert "no application secret, consumer key" in text
    assert "OVH_APPLICATION_SECRET, OVH_CONSUMER_KEY" in text
    assert "[ovh-lab]" in text
    assert lab.fake.requests == []


def test_credentials_come_from_the_settings_config_file(
        lab: Lab, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for variable in ("OVH_APPLICATION_KEY", "OVH_APPLICATION_SECRET", "OVH_CONSUMER_KEY"):
        monkeypatch.delenv(variable)
    config = tmp_path / "ovh.conf"
    config.write_text("[ovh-lab]\napplication_key=lab-application-key\n"
                      "application_secret=lab-application-secret\n"
                      "consumer_key=lab-consumer-key\n")
    provider = make_provider(lab.fake, lab.banner, [], tmp_path, config_file=str(config))

    assert provider.ensure_server(lab.node).server_id == SERVICE


def test_rate_limits_and_server_errors_are_retried_then_succeed(lab: Lab) -> None:
    lab.fake.inject("rate_limit", 2)
    lab.fake.inject("server_error")
    lab.fake.inject("bad_gateway")

    assert lab.provider.ensure_server(lab.node).status == "disk"
    assert lab.fake.failures == {"rate_limit": 0, "server_error": 0, "bad_gateway": 0}
    assert any("rate limited" in line for line in lab.logs)
    assert any("not JSON" in line for line in lab.logs)


def test_a_rate_limit_that_outlasts_the_budget_gives_up_naming_the_call(lab: Lab) -> None:
    lab.fake.inject("rate_limit", 10_000)
    lab.provider.api_timeout = 0.2

    with pytest.raises(Exception) as caught:
        lab.provider.ensure_server(lab.node)

    text = one_line(caught.value)
    assert f"OVH GET /dedicated/server/{SERVICE}: gave up" in text
    assert "rate limited" in text


# -- what OVH servers cannot do, and their network -----------------------------------------


def test_delete_and_power_off_refuse_in_one_line(lab: Lab) -> None:
    with pytest.raises(ProviderError) as deleting:
        lab.provider.delete(lab.node)
    assert "cancel" in one_line(deleting.value) and "OVHcloud console" in str(deleting.value)
    with pytest.raises(ProviderError) as powering:
        lab.provider.power_off(lab.node)
    assert "IPMI" in one_line(powering.value)
    assert lab.calls() == []


def test_network_is_static_with_the_254_gateway_of_the_servers_24(lab: Lab) -> None:
    network = lab.provider.network(lab.node)

    assert (network.mode, network.address, network.prefix, network.gateway) == (
        "static", IP, 24, "203.0.113.254")
    assert network.kernel_ip_arg() == "ip=203.0.113.10::203.0.113.254:255.255.255.0::eth0:off"


def test_list_reports_every_server_of_the_account(lab: Lab) -> None:
    lab.fake.add_server("ns2.ip-198-51-100.eu", "198.51.100.20")

    servers = lab.provider.list()

    assert sorted(server.server_id for server in servers) == sorted(
        [SERVICE, "ns2.ip-198-51-100.eu"])
    assert {server.status for server in servers} == {"disk"}


def test_an_interrupt_during_the_rescue_boot_still_restores_the_disk_netboot(
        lab: Lab) -> None:
    def interrupted(service: str, task_id: int, what: str) -> None:
        raise KeyboardInterrupt

    lab.provider._wait_task = interrupted  # type: ignore[method-assign]

    with pytest.raises(KeyboardInterrupt):
        lab.provider.boot_rescue(lab.node, [KEY])

    assert lab.fake.boot_type(SERVICE) == "harddisk"
    assert any("set back to the hard disk" in line for line in lab.logs)


# -- clonefleet power on|off|reset ---------------------------------------------------------


def test_power_on_of_a_powered_off_server_netboots_the_disk_and_reboots(lab: Lab) -> None:
    lab.fake.server(SERVICE).power_state = "poweroff"
    assert lab.provider.info(lab.node).status == "off"

    assert lab.provider.power_on(lab.node) is True

    assert [path for _, path, _ in lab.calls()] == [f"/dedicated/server/{SERVICE}/reboot"]
    assert lab.machines.calls[-1] == ("power_on", SERVICE, "disk")
    assert lab.provider.info(lab.node).status == "disk"


def test_power_on_of_a_server_that_is_on_asks_nothing(lab: Lab) -> None:
    assert lab.provider.power_on(lab.node) is False
    assert lab.calls() == []


def test_reset_is_a_followed_hard_reboot_task(lab: Lab) -> None:
    lab.provider.reset(lab.node)

    assert [path for _, path, _ in lab.calls()] == [f"/dedicated/server/{SERVICE}/reboot"]
    assert lab.machines.calls[-1] == ("power_on", SERVICE, "disk")
