"""The hetzner-cloud driver against the Hetzner Cloud fake: create or adopt, rescue + reset,
boot from disk, power, delete, and every injected failure ending in the documented retry or
in one line naming the node, the server and what to do."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hcloud import Client
from hcloud.images import Image
from hcloud.server_types import ServerType
from hcloud_support import running_fake

from clonefleet.errors import ClonefleetError, ConfigError, ProviderError
from clonefleet.fakes.hcloud import DEFAULT_TOKEN, HcloudFake
from clonefleet.fakes.machines import RecordingMachines
from clonefleet.inventory import Node
from clonefleet.providers.base import ProviderConfig, SshAccess
from clonefleet.providers.hetzner_cloud import HetznerCloudProvider, Timing
from clonefleet.retry import GaveUp, RetryPolicy
from clonefleet.ssh import generate_ed25519

pytestmark = pytest.mark.integration

FAST = Timing(request_policy=RetryPolicy(first=0.01, cap=0.02, jitter=0),
              request_timeout=0.5,
              poll_policy=RetryPolicy(first=0.005, cap=0.02, jitter=0),
              action_timeout=0.3,
              banner_policy=RetryPolicy(first=0.02, cap=0.05, jitter=0),
              banner_patience=0.5, http_timeout=5.0)
OPERATOR = generate_ed25519("operator").public_line
NODE = Node(name="fsn-1", region="fsn", provider="hcloud", disks=("disk-a",))


@pytest.fixture()
def machines() -> RecordingMachines:
    return RecordingMachines()


@pytest.fixture()
def fake(machines: RecordingMachines, monkeypatch: pytest.MonkeyPatch) -> Iterator[HcloudFake]:
    with running_fake(machines, monkeypatch) as server:
        yield server


@pytest.fixture()
def logs() -> list[str]:
    return []


def provider_for(fake: HcloudFake, tmp_path: Path, logs: list[str], **settings: object
                 ) -> HetznerCloudProvider:
    config = ProviderConfig(name="hcloud", driver="hetzner-cloud",
                            settings={"api_url": fake.url, **settings},
                            route=lambda access: SshAccess("127.0.0.1", 20000 + access.port),
                            forwards=lambda host: {"udp/53": ("127.0.0.1", 20053),
                                                   "seen-for": (host, 0)})
    return HetznerCloudProvider(config, tmp_path, logs.append, fleet_name="testfleet",
                                operator_public_key=lambda: OPERATOR, timing=FAST)


@pytest.fixture()
def provider(fake: HcloudFake, tmp_path: Path, logs: list[str]) -> HetznerCloudProvider:
    return provider_for(fake, tmp_path, logs)


def requests_to(fake: HcloudFake, method: str, suffix: str) -> int:
    return sum(1 for seen_method, path in fake.api.requests
               if seen_method == method and path.endswith(suffix))


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and "Traceback" not in text
    return text


def direct_client(fake: HcloudFake) -> Client:
    return Client(DEFAULT_TOKEN, api_endpoint=fake.url, poll_interval=0.005)


# -- create and adopt --------------------------------------------------------------------------

def test_ensure_server_creates_a_labelled_server_with_the_operator_key_and_waits_for_it(
        provider: HetznerCloudProvider, fake: HcloudFake, machines: RecordingMachines) -> None:
    info = provider.ensure_server(NODE)

    server = fake.api.servers[int(info.server_id)]
    assert server.labels == {"clonefleet/fleet": "testfleet", "clonefleet/node": "fsn-1"}
    assert (server.server_type["name"], server.image["name"], server.location["name"]) == \
        ("cx22", "debian-12", "fsn1")
    (key,) = fake.api.ssh_keys.values()
    assert key.name == "clonefleet-testfleet" and server.ssh_keys == [key.id]
    assert info.status == "disk" and server.status == "running"
    assert machines.calls == [("created", info.server_id, "fsn-1"),
                              ("power_on", info.server_id, "disk")]
    # Addresses come from the API and go through the provider's route; the other forwarded
    # ports (lab fakes only) are the ones for the server's public IPv4.
    assert info.ssh == SshAccess("127.0.0.1", 20022)
    assert info.forwarded_ports == {"udp/53": ("127.0.0.1", 20053),
                                    "seen-for": (server.ipv4, 0)}
    assert info.unlock == SshAccess("127.0.0.1", 22222)
    assert info.details["location"] == "fsn1" and info.nic_modules == ("virtio_net",)


def test_a_second_ensure_server_adopts_the_labelled_server_and_creates_nothing(
        provider: HetznerCloudProvider, fake: HcloudFake, logs: list[str]) -> None:
    first = provider.ensure_server(NODE)
    second = provider.ensure_server(NODE)

    assert second.server_id == first.server_id
    assert requests_to(fake, "POST", "/v1/servers") == 1
    assert requests_to(fake, "POST", "/v1/ssh_keys") == 1
    assert any("adopted" in line for line in logs)


def test_nodes_created_at_once_by_their_own_drivers_share_one_uploaded_operator_key(
        fake: HcloudFake, tmp_path: Path, logs: list[str]) -> None:
    # provision over several nodes gives each node its own driver instance, in its own thread.
    nodes = [Node(name=f"fsn-{number}", region="fsn", provider="hcloud", disks=("disk-a",))
             for number in (1, 2, 3)]
    outcomes: dict[str, object] = {}

    def create(node: Node) -> None:
        try:
            outcomes[node.name] = provider_for(fake, tmp_path, logs).ensure_server(node)
        except ClonefleetError as error:
            outcomes[node.name] = error

    threads = [threading.Thread(target=create, args=(node,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not [error for error in outcomes.values() if isinstance(error, ClonefleetError)]
    (key,) = fake.api.ssh_keys.values()
    assert all(server.ssh_keys == [key.id] for server in fake.api.servers.values())
    assert len(fake.api.servers) == 3


def test_settings_and_node_server_type_choose_what_is_created(
        fake: HcloudFake, tmp_path: Path, logs: list[str]) -> None:
    provider = provider_for(fake, tmp_path, logs, location="ash", image="ubuntu-24.04",
                            ssh_key_name="ops-FLEETNAME")
    node = Node(name="ash-1", region="ash", provider="hcloud", disks=("d",),
                server_type="cpx11")

    info = provider.ensure_server(node)

    server = fake.api.servers[int(info.server_id)]
    assert (server.server_type["name"], server.image["name"], server.location["name"]) == \
        ("cpx11", "ubuntu-24.04", "ash")
    assert [key.name for key in fake.api.ssh_keys.values()] == ["ops-testfleet"]


def test_an_existing_server_id_is_adopted_even_without_labels(
        provider: HetznerCloudProvider, fake: HcloudFake) -> None:
    created = direct_client(fake).servers.create("legacy", ServerType(name="cx22"),
                                                 Image(name="debian-12"))
    node = Node(name="legacy", region="fsn", provider="hcloud", disks=("d",),
                server_id=str(created.server.id))

    info = provider.ensure_server(node)

    assert info.server_id == str(created.server.id)
    assert requests_to(fake, "POST", "/v1/servers") == 1


def test_two_servers_with_the_same_node_label_stop_with_both_ids(
        provider: HetznerCloudProvider, fake: HcloudFake) -> None:
    client = direct_client(fake)
    labels = {"clonefleet/fleet": "testfleet", "clonefleet/node": "fsn-1"}
    ids = [client.servers.create(name, ServerType(name="cx22"), Image(name="debian-12"),
                                 labels=labels).server.id for name in ("fsn-1", "fsn-1-copy")]

    with pytest.raises(ProviderError) as caught:
        provider.ensure_server(NODE)

    message = one_line(caught.value)
    assert all(str(server_id) in message for server_id in ids) and "fsn-1" in message
    assert requests_to(fake, "POST", "/v1/servers") == 2


def test_a_server_with_the_node_name_but_no_labels_is_never_created_again(
        provider: HetznerCloudProvider, fake: HcloudFake) -> None:
    existing = direct_client(fake).servers.create("fsn-1", ServerType(name="cx22"),
                                                  Image(name="debian-12"))

    with pytest.raises(ProviderError) as caught:
        provider.ensure_server(NODE)

    message = one_line(caught.value)
    assert str(existing.server.id) in message and "labels" in message
    assert requests_to(fake, "POST", "/v1/servers") == 1


def test_an_unknown_server_type_is_one_line_naming_the_field(
        fake: HcloudFake, tmp_path: Path, logs: list[str]) -> None:
    provider = provider_for(fake, tmp_path, logs, server_type="cx999")

    with pytest.raises(ProviderError) as caught:
        provider.ensure_server(NODE)

    message = one_line(caught.value)
    assert "fsn-1" in message and "cx999" in message and "fleet file" in message
    assert fake.api.servers == {}


# -- rescue, disk, power, delete ---------------------------------------------------------------

def test_boot_rescue_enables_rescue_with_the_keys_resets_and_waits(
        provider: HetznerCloudProvider, fake: HcloudFake, machines: RecordingMachines) -> None:
    info = provider.ensure_server(NODE)
    other = generate_ed25519("second").public_line

    access = provider.boot_rescue(NODE, [OPERATOR, other])

    assert access == SshAccess("127.0.0.1", 20022)
    assert machines.calls[-1] == ("power_on", info.server_id, "rescue")
    server = fake.api.servers[int(info.server_id)]
    # Rescue switched itself off on the boot into it, as on Hetzner; the driver remembers.
    assert server.rescue_enabled is False
    assert provider.info(NODE).status == "rescue"
    assert sorted(key.name for key in fake.api.ssh_keys.values()) == \
        ["clonefleet-testfleet", "clonefleet-testfleet-2"]
    commands = [path.rsplit("/", 1)[-1] for method, path in fake.api.requests
                if method == "POST" and "/actions/" in path]
    assert commands == ["enable_rescue", "reset"]


def test_boot_rescue_disables_a_stale_rescue_before_enabling_it_again(
        provider: HetznerCloudProvider, fake: HcloudFake) -> None:
    info = provider.ensure_server(NODE)
    client = direct_client(fake)
    server = client.servers.get_by_id(int(info.server_id))
    client.servers.enable_rescue(server, type="linux64").action.wait_until_finished()

    provider.boot_rescue(NODE, [OPERATOR])

    commands = [path.rsplit("/", 1)[-1] for method, path in fake.api.requests
                if method == "POST" and "/actions/" in path]
    assert commands[-3:] == ["disable_rescue", "enable_rescue", "reset"]


def test_boot_rescue_powers_on_a_server_that_is_off(
        provider: HetznerCloudProvider, fake: HcloudFake, machines: RecordingMachines) -> None:
    info = provider.ensure_server(NODE)
    provider.power_off(NODE)
    assert provider.info(NODE).status == "off"

    provider.boot_rescue(NODE, [OPERATOR])

    assert machines.calls[-2:] == [("power_off", info.server_id, ""),
                                   ("power_on", info.server_id, "rescue")]
    assert requests_to(fake, "POST", "/actions/poweron") == 1


def test_boot_disk_after_rescue_boots_the_disk(
        provider: HetznerCloudProvider, machines: RecordingMachines) -> None:
    info = provider.ensure_server(NODE)
    provider.boot_rescue(NODE, [OPERATOR])

    provider.boot_disk(NODE)

    assert machines.calls[-1] == ("power_on", info.server_id, "disk")
    assert provider.info(NODE).status == "disk"


def test_boot_disk_disables_a_rescue_that_is_still_enabled(
        provider: HetznerCloudProvider, fake: HcloudFake, machines: RecordingMachines) -> None:
    info = provider.ensure_server(NODE)
    client = direct_client(fake)
    client.servers.enable_rescue(client.servers.get_by_id(int(info.server_id)),
                                 type="linux64").action.wait_until_finished()

    provider.boot_disk(NODE)

    assert machines.calls[-1] == ("power_on", info.server_id, "disk")
    assert requests_to(fake, "POST", "/actions/disable_rescue") == 1


def test_reset_power_off_and_delete(
        provider: HetznerCloudProvider, fake: HcloudFake, machines: RecordingMachines,
        logs: list[str]) -> None:
    info = provider.ensure_server(NODE)

    provider.reset(NODE)
    assert machines.calls[-1] == ("power_on", info.server_id, "disk")
    provider.power_off(NODE)
    provider.power_off(NODE)  # already off: nothing to do
    assert requests_to(fake, "POST", "/actions/poweroff") == 1
    assert provider.info(NODE).status == "off"

    provider.delete(NODE)
    assert fake.api.servers == {}
    assert provider.info(NODE).status == "missing"
    provider.delete(NODE)  # nothing left: says so, fails nothing
    assert "fsn-1: no Hetzner Cloud server to delete" in logs


def test_list_reports_the_fleets_servers_and_the_network_is_dhcp(
        provider: HetznerCloudProvider) -> None:
    provider.ensure_server(NODE)
    provider.ensure_server(Node(name="fsn-2", region="fsn", provider="hcloud", disks=("d",)))

    assert sorted(info.node for info in provider.list()) == ["fsn-1", "fsn-2"]
    assert provider.network(NODE).kernel_ip_arg() == "ip=:::::eth0:dhcp"


def test_operations_on_a_node_without_server_say_to_provision_it(
        provider: HetznerCloudProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        provider.boot_rescue(NODE, [OPERATOR])
    assert "clonefleet provision fsn-1" in one_line(caught.value)


# -- injected failures -------------------------------------------------------------------------

@pytest.mark.parametrize("failure", ["locked", "resource_unavailable"])
def test_a_locked_or_unavailable_reset_is_retried(
        failure: str, provider: HetznerCloudProvider, fake: HcloudFake,
        machines: RecordingMachines, logs: list[str]) -> None:
    info = provider.ensure_server(NODE)
    fake.inject(failure, times=2, command="reset_server")

    provider.boot_rescue(NODE, [OPERATOR])

    assert requests_to(fake, "POST", "/actions/reset") == 3
    assert machines.calls[-1] == ("power_on", info.server_id, "rescue")
    assert sum(failure in line for line in logs) == 2


def test_resource_unavailable_on_create_is_retried_then_named(
        provider: HetznerCloudProvider, fake: HcloudFake) -> None:
    fake.inject("resource_unavailable", times=2, command="create_server")
    assert provider.ensure_server(NODE).status == "disk"

    fake.inject("resource_unavailable", times=1000, command="create_server")
    with pytest.raises(ProviderError) as caught:
        provider.ensure_server(Node(name="fsn-2", region="fsn", provider="hcloud",
                                    disks=("d",)))
    message = one_line(caught.value)
    assert "fsn-2" in message and "resource_unavailable" in message
    assert "another `location` or `server_type`" in message


@pytest.mark.parametrize(("failure", "times"), [("rate_limit", 8), ("server_error", 3),
                                                ("bad_gateway", 7)])
def test_rate_limits_and_server_errors_are_retried(
        failure: str, times: int, provider: HetznerCloudProvider, fake: HcloudFake) -> None:
    fake.inject(failure, times=times)

    info = provider.ensure_server(NODE)

    assert info.status == "disk"
    assert not any(injection.times for injection in fake.api.injections)


def test_a_rate_limit_that_does_not_end_is_one_line_saying_to_wait(
        provider: HetznerCloudProvider, fake: HcloudFake) -> None:
    fake.inject("rate_limit", times=10_000)

    with pytest.raises(ProviderError) as caught:
        provider.ensure_server(NODE)

    message = one_line(caught.value)
    assert "fsn-1" in message and "rate_limit_exceeded" in message and "wait" in message


def test_a_failed_enable_rescue_action_is_tried_again(
        provider: HetznerCloudProvider, fake: HcloudFake, machines: RecordingMachines) -> None:
    info = provider.ensure_server(NODE)
    fake.inject("action_error", times=1, command="enable_rescue")

    provider.boot_rescue(NODE, [OPERATOR])

    assert requests_to(fake, "POST", "/actions/enable_rescue") == 2
    assert machines.calls[-1] == ("power_on", info.server_id, "rescue")


def test_a_reset_that_keeps_failing_after_rescue_was_enabled_says_rescue_is_enabled(
        provider: HetznerCloudProvider, fake: HcloudFake) -> None:
    info = provider.ensure_server(NODE)
    fake.inject("action_error", times=10_000, command="reset_server")

    with pytest.raises(ProviderError) as caught:
        provider.boot_rescue(NODE, [OPERATOR])

    message = one_line(caught.value)
    assert "rescue is ENABLED" in message and info.server_id in message
    assert "clonefleet provision fsn-1" in message and "Hetzner Console" in message
    assert fake.api.servers[int(info.server_id)].rescue_enabled is True


def test_a_reset_that_never_finishes_says_rescue_is_enabled(
        provider: HetznerCloudProvider, fake: HcloudFake) -> None:
    provider.ensure_server(NODE)
    fake.inject("action_timeout", times=1, command="reset_server")

    with pytest.raises(ProviderError) as caught:
        provider.boot_rescue(NODE, [OPERATOR])

    message = one_line(caught.value)
    assert "not done after" in message and "rescue is ENABLED" in message


def test_an_enable_rescue_that_never_finishes_says_rescue_may_be_enabled(
        provider: HetznerCloudProvider, fake: HcloudFake) -> None:
    provider.ensure_server(NODE)
    fake.inject("action_timeout", times=1, command="enable_rescue")

    with pytest.raises(ProviderError) as caught:
        provider.boot_rescue(NODE, [OPERATOR])

    assert "rescue may be ENABLED" in one_line(caught.value)
    assert requests_to(fake, "POST", "/actions/reset") == 0


def test_a_failed_create_action_is_one_line_and_the_server_is_adopted_next_time(
        provider: HetznerCloudProvider, fake: HcloudFake) -> None:
    fake.inject("action_error", times=1, command="create_server")

    with pytest.raises(ProviderError) as caught:
        provider.ensure_server(NODE)
    assert "adopted on the next run" in one_line(caught.value)

    info = provider.ensure_server(NODE)
    assert info.status == "off"
    assert requests_to(fake, "POST", "/v1/servers") == 1


def test_a_bad_token_is_one_line_naming_the_variable_and_is_not_retried(
        provider: HetznerCloudProvider, fake: HcloudFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HCLOUD_TOKEN", "wrong")

    with pytest.raises(ProviderError) as caught:
        provider.ensure_server(NODE)

    message = one_line(caught.value)
    assert "HCLOUD_TOKEN" in message and "unauthorized" in message
    assert len(fake.api.requests) == 1


def test_an_unset_token_variable_is_a_config_error_naming_it(
        fake: HcloudFake, tmp_path: Path, logs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MY_HCLOUD", raising=False)
    provider = provider_for(fake, tmp_path, logs, token_env="MY_HCLOUD")

    with pytest.raises(ConfigError) as caught:
        provider.info(NODE)

    assert "MY_HCLOUD" in one_line(caught.value)
    assert fake.api.requests == []


# -- waiting for SSH ---------------------------------------------------------------------------

def test_wait_ready_returns_when_a_banner_answers_and_times_out_otherwise(
        provider: HetznerCloudProvider) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.sendall(b"SSH-2.0-fake\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    provider.wait_ready(SshAccess("127.0.0.1", port), NODE, 5, "rescue system ssh")
    thread.join(timeout=5)
    listener.close()

    with pytest.raises(GaveUp) as caught:
        provider.wait_ready(SshAccess("127.0.0.1", port), NODE, 0.2, "sshd")
    assert isinstance(caught.value, ClonefleetError) and caught.value.exit_code == 9
    assert "fsn-1: wait for sshd" in one_line(caught.value)


def test_create_without_a_fleet_file_names_the_fleet_after_the_state_folder(
        tmp_path: Path) -> None:
    from clonefleet.providers.hetzner_cloud import create

    provider = create(ProviderConfig(name="hcloud", driver="hetzner-cloud"),
                      tmp_path / "prod", print)

    assert provider.fleet == "prod" and provider.ssh_key_name == "clonefleet-prod"
    assert provider.settings["api_url"] == "https://api.hetzner.cloud/v1"


# -- clonefleet power on|off|reset ------------------------------------------------------------

def test_power_on_starts_a_server_that_is_off_from_disk_and_leaves_a_running_one(
        provider: HetznerCloudProvider, fake: HcloudFake, machines: RecordingMachines) -> None:
    info = provider.ensure_server(NODE)
    assert provider.power_on(NODE) is False  # running: nothing asked
    assert requests_to(fake, "POST", "/actions/poweron") == 0

    provider.power_off(NODE)
    assert provider.info(NODE).status == "off"
    assert provider.power_on(NODE) is True

    assert requests_to(fake, "POST", "/actions/poweron") == 1
    assert machines.calls[-1] == ("power_on", info.server_id, "disk")
    assert provider.info(NODE).status == "disk"


def test_power_on_disables_a_rescue_left_enabled_so_the_disk_boots(
        provider: HetznerCloudProvider, fake: HcloudFake, machines: RecordingMachines) -> None:
    info = provider.ensure_server(NODE)
    provider.power_off(NODE)
    client = direct_client(fake)
    client.servers.enable_rescue(client.servers.get_by_id(int(info.server_id)),
                                 type="linux64").action.wait_until_finished()

    provider.power_on(NODE)

    commands = [path.rsplit("/", 1)[-1] for method, path in fake.api.requests
                if method == "POST" and "/actions/" in path]
    assert commands[-2:] == ["disable_rescue", "poweron"]
    assert machines.calls[-1] == ("power_on", info.server_id, "disk")


def test_a_locked_power_on_is_retried(
        provider: HetznerCloudProvider, fake: HcloudFake, machines: RecordingMachines) -> None:
    info = provider.ensure_server(NODE)
    provider.power_off(NODE)
    fake.inject("locked", times=2, command="start_server")

    assert provider.power_on(NODE) is True

    assert requests_to(fake, "POST", "/actions/poweron") == 3
    assert machines.calls[-1] == ("power_on", info.server_id, "disk")
