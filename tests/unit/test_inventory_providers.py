"""`[providers.NAME]` tables, driver keys on nodes, credentials, and every error at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from clonefleet.errors import InventoryError, InventoryErrors
from clonefleet.inventory import load_fleet
from clonefleet.providers import SshAccess
from clonefleet.providers.registry import DRIVERS, credential

pytestmark = pytest.mark.unit

HEAD = """
[fleet]
name = "p"
domain = "fleet.example.com"
"""

CLOUD = HEAD + """
[providers.cloud]
driver = "hetzner-cloud"
location = "nbg1"

[providers.robot]
driver = "hetzner-robot"
reset_type = "sw"

[regions.fsn]
provider = "cloud"
latitude = 50.47
longitude = 12.37

[nodes.c1]
region = "fsn"
disks = ["SER-1"]
ipv4 = "203.0.113.10"
server_type = "cx32"
image = "debian-12"

[nodes.r1]
region = "fsn"
provider = "robot"
disks = ["SER-2"]
ipv4 = "203.0.113.11"
robot_server = 321
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


def errors_for(tmp_path: Path, text: str) -> list[InventoryError]:
    with pytest.raises((InventoryError, InventoryErrors)) as caught:
        load_fleet(write(tmp_path, text))
    error = caught.value
    found = error.errors if isinstance(error, InventoryErrors) else [error]
    assert isinstance(found[0], InventoryError)
    for one in found:
        assert "\n" not in str(one) and str(tmp_path / "fleet.toml") in str(one)
    return found  # type: ignore[return-value]


def test_provider_tables_get_their_driver_defaults_and_node_keys(tmp_path: Path) -> None:
    fleet = load_fleet(write(tmp_path, CLOUD))
    cloud = fleet.providers["cloud"]
    assert cloud.driver == "hetzner-cloud" and cloud.fleet_path == tmp_path / "fleet.toml"
    assert cloud.settings["location"] == "nbg1"
    assert cloud.settings["token_env"] == "HCLOUD_TOKEN"
    assert cloud.settings["api_url"] == "https://api.hetzner.cloud/v1"
    assert cloud.settings["ssh_key_name"] == "clonefleet-p"  # the fleet's name filled in
    assert cloud.settings["lab_routes"] is False
    assert fleet.providers["robot"].settings["reset_type"] == "sw"
    assert fleet.nodes["c1"].provider == "cloud"
    assert fleet.nodes["c1"].provider_settings == {"server_type": "cx32", "image": "debian-12"}
    assert fleet.nodes["c1"].server_type == "cx32"
    assert fleet.nodes["r1"].provider_settings == {"robot_server": 321}


def test_a_driver_named_without_a_table_gets_its_defaults(tmp_path: Path) -> None:
    text = HEAD + """
[regions.gra]
provider = "ovh"
latitude = 50.0
longitude = 2.0

[nodes.o1]
region = "gra"
disks = ["SER-1"]
ipv4 = "203.0.113.20"
service_name = "ns1234567.ip-203-0-113.eu"
"""
    fleet = load_fleet(write(tmp_path, text))
    assert fleet.providers["ovh"].driver == "ovh"
    assert fleet.providers["ovh"].settings["endpoint"] == "ovh-eu"
    assert fleet.nodes["o1"].provider_settings == {"service_name": "ns1234567.ip-203-0-113.eu"}


def test_the_lab_keeps_working_without_a_table() -> None:
    fleet = load_fleet(Path(__file__).resolve().parents[2] / "inventory" / "lab.toml")
    assert set(fleet.providers) == {"lab"}
    assert fleet.providers["lab"].driver == "lab"
    access = SshAccess("127.0.0.1", 2222)
    assert fleet.providers["lab"].route(access) is access


def test_the_three_real_drivers_are_registered_with_their_fixed_names() -> None:
    assert DRIVERS["hetzner-cloud"].module == "clonefleet.providers.hetzner_cloud"
    assert DRIVERS["hetzner-robot"].module == "clonefleet.providers.hetzner_robot"
    assert DRIVERS["ovh"].module == "clonefleet.providers.ovh_dedicated"
    assert set(DRIVERS["hetzner-cloud"].node_keys) == {"server_type", "image", "location"}
    assert set(DRIVERS["hetzner-robot"].node_keys) == {"robot_server"}
    assert set(DRIVERS["ovh"].node_keys) == {"service_name"}
    assert DRIVERS["hetzner-robot"].settings["user_env"].default == "HETZNER_ROBOT_USER"
    assert DRIVERS["ovh"].settings["api_url"].default is None


def test_a_cloud_only_key_on_a_robot_node_names_both_drivers(tmp_path: Path) -> None:
    [error] = errors_for(tmp_path, CLOUD + 'location = "fsn1"\n')
    assert error.key == "nodes.r1.location"
    assert "hetzner-cloud key" in error.problem and "hetzner-robot" in error.problem
    assert "robot_server" in error.fix


def test_unknown_provider_names_tables_and_drivers(tmp_path: Path) -> None:
    [error] = errors_for(tmp_path, CLOUD.replace('provider = "robot"', 'provider = "aws"'))
    assert error.key == "nodes.r1.provider" and "'aws'" in error.problem
    assert "cloud" in error.fix and "hetzner-robot" in error.fix
    assert "[providers.aws]" in error.fix


def test_unknown_driver_in_a_table_is_named(tmp_path: Path) -> None:
    [error] = errors_for(tmp_path, CLOUD.replace('driver = "hetzner-robot"',
                                                 'driver = "hetzner-rbot"'))
    assert error.key == "providers.robot.driver" and "hetzner-robot" in error.fix


def test_a_table_named_after_no_driver_must_say_its_driver(tmp_path: Path) -> None:
    [error] = errors_for(tmp_path, CLOUD.replace('[providers.robot]\ndriver = "hetzner-robot"\n',
                                                 '[providers.robot]\n'))
    assert error.key == "providers.robot.driver" and "missing" in error.problem


def test_a_token_in_the_fleet_file_is_refused_naming_the_variable_setting(
        tmp_path: Path) -> None:
    [error] = errors_for(tmp_path, CLOUD.replace('location = "nbg1"',
                                                 'location = "nbg1"\ntoken = "s3cr3t"'))
    assert error.key == "providers.cloud.token"
    assert "credentials never go in the fleet file" in error.problem
    assert "HCLOUD_TOKEN" in error.fix and "token_env" in error.fix
    assert "s3cr3t" not in str(error)


def test_an_ovh_key_in_the_fleet_file_points_to_python_ovh_lookup(tmp_path: Path) -> None:
    text = HEAD + ('[providers.ovh]\napplication_secret = "x"\n\n[regions.gra]\n'
                   'provider = "ovh"\nlatitude = 50.0\nlongitude = 2.0\n')
    [error] = errors_for(tmp_path, text)
    assert error.key == "providers.ovh.application_secret"
    assert "OVH_APPLICATION_SECRET" in error.fix and "ovh.conf" in error.fix


def test_a_secret_pasted_as_a_variable_name_is_refused_without_echoing_it(
        tmp_path: Path) -> None:
    secret = "jEheVytlAoFl7F8MqUQ7jAo2hOXASztX"
    [error] = errors_for(tmp_path, CLOUD.replace('location = "nbg1"',
                                                 f'token_env = "{secret}"'))
    assert error.key == "providers.cloud.token_env"
    assert secret not in str(error) and "HCLOUD_TOKEN" in error.fix


def test_a_setting_of_the_wrong_type_is_named(tmp_path: Path) -> None:
    [error] = errors_for(tmp_path, CLOUD.replace('reset_type = "sw"', "reset_type = 3"))
    assert error.key == "providers.robot.reset_type" and "expected str" in error.problem


def test_a_node_key_of_the_wrong_type_is_named(tmp_path: Path) -> None:
    [error] = errors_for(tmp_path, CLOUD.replace("robot_server = 321", "robot_server = 1.5"))
    assert error.key == "nodes.r1.robot_server"


def test_an_unknown_setting_lists_the_drivers_settings(tmp_path: Path) -> None:
    [error] = errors_for(tmp_path, CLOUD.replace('reset_type = "sw"', 'colour = "red"'))
    assert error.key == "providers.robot.colour" and "reset_type" in error.fix


def test_every_error_of_the_file_is_reported_at_once(tmp_path: Path) -> None:
    text = (CLOUD.replace('location = "nbg1"', 'location = "nbg1"\ntoken = "x"')
            .replace("robot_server = 321", 'robot_server = 321\nlocation = "fsn1"')
            .replace('domain = "fleet.example.com"', 'domain = "no_dots"')
            .replace("latitude = 50.47", "latitude = 91.0")
            + '\n[nodes.x1]\nregion = "hel"\ndisks = ["SER-1"]\nmemory_mb = 10\n')
    keys = [error.key for error in errors_for(tmp_path, text)]
    assert keys == ["fleet.domain", "providers.cloud.token", "regions.fsn.latitude",
                    "nodes.r1.location", "nodes.x1.region", "nodes.x1.disks",
                    "nodes.x1.memory_mb"]


def test_check_prints_every_error_on_its_own_line_and_exits_2(tmp_path: Path) -> None:
    from clonefleet.cli import _register, cli

    _register()
    text = CLOUD.replace("robot_server = 321", 'robot_server = 321\nimage = "x"').replace(
        'reset_type = "sw"', "reset_type = 1")
    result = CliRunner().invoke(cli, ["--fleet", str(write(tmp_path, text)), "check",
                                      "--skip-credentials"],
                                env={"CLONEFLEET_STATE_DIR": str(tmp_path / "state")})
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert "providers.robot.reset_type" in lines[0] and "nodes.r1.image" in lines[1]


def test_check_reports_unset_credential_variables_with_the_other_errors(
        tmp_path: Path) -> None:
    from clonefleet.cli import _register, cli

    _register()
    path = write(tmp_path, CLOUD)
    env = {"CLONEFLEET_STATE_DIR": str(tmp_path / "state"), "HCLOUD_TOKEN": "",
           "HETZNER_ROBOT_USER": "u", "HETZNER_ROBOT_PASSWORD": ""}
    result = CliRunner().invoke(cli, ["--fleet", str(path), "check"], env=env)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2
    assert "providers.cloud.token_env: environment variable HCLOUD_TOKEN is not set" in lines[0]
    assert "providers.robot.password_env" in lines[1] and "HETZNER_ROBOT_PASSWORD" in lines[1]
    env.update(HCLOUD_TOKEN="t", HETZNER_ROBOT_PASSWORD="p")
    assert CliRunner().invoke(cli, ["--fleet", str(path), "check"], env=env).exit_code == 0


def test_credential_reads_the_variable_the_setting_names(tmp_path: Path) -> None:
    config = load_fleet(write(tmp_path, CLOUD)).providers["cloud"]
    assert credential(config, "token_env", {"HCLOUD_TOKEN": "abc"}) == "abc"
    with pytest.raises(InventoryError) as caught:
        credential(config, "token_env", {})
    message = str(caught.value)
    assert "\n" not in message and caught.value.exit_code == 2
    assert str(tmp_path / "fleet.toml") in message
    assert "providers.cloud.token_env" in message and "'cloud'" in message
    assert "export HCLOUD_TOKEN=" in message


def test_static_ipv6_defaults_its_gateway_to_fe80_1(tmp_path: Path) -> None:
    text = CLOUD + ('\n[nodes.r1.network]\naddress = "203.0.113.11"\nprefix = 32\n'
                    'gateway = "172.31.1.1"\nipv6_address = "2001:db8:1::2/64"\n')
    network = load_fleet(write(tmp_path, text)).nodes["r1"].network
    assert network is not None
    assert network.ipv6_address == "2001:db8:1::2/64" and network.ipv6_gateway == "fe80::1"


@pytest.mark.parametrize("value", ['"2001:db8::2"', '"2001:db8::zz/64"', '"10.0.0.1/24"'])
def test_ipv6_address_needs_a_prefix_and_a_valid_address(tmp_path: Path, value: str) -> None:
    text = CLOUD + ('\n[nodes.r1.network]\naddress = "203.0.113.11"\nprefix = 32\n'
                    f'gateway = "172.31.1.1"\nipv6_address = {value}\n')
    [error] = errors_for(tmp_path, text)
    assert error.key == "nodes.r1.network.ipv6_address" and "/64" in error.fix
