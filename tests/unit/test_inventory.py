"""Fleet file validation: every bad input is one line naming the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from clonefleet.errors import InventoryError
from clonefleet.inventory import load_fleet

pytestmark = pytest.mark.unit

GOOD = """
[fleet]
name = "t"
domain = "fleet.example.com"

[[routed]]
name = "edge"

[regions.fsn]
provider = "lab"
latitude = 50.47
longitude = 12.37

[nodes.n1]
region = "fsn"
disks = ["SER-1"]
ipv4 = "192.0.2.1"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


def error_for(tmp_path: Path, text: str) -> InventoryError:
    with pytest.raises(InventoryError) as caught:
        load_fleet(write(tmp_path, text))
    message = str(caught.value)
    assert "\n" not in message
    assert str(tmp_path / "fleet.toml") in message
    return caught.value


def test_valid_fleet_loads_with_defaults(tmp_path: Path) -> None:
    fleet = load_fleet(write(tmp_path, GOOD))
    assert fleet.name == "t"
    assert fleet.nodes["n1"].provider == "lab"
    assert fleet.nodes["n1"].memory_mb == 2048
    assert fleet.regions["fsn"].min_active == 1
    assert fleet.routed[0].ttl == 30
    assert not fleet.nodes["n1"].raid


def test_shipped_lab_fleet_is_valid() -> None:
    fleet = load_fleet(Path(__file__).resolve().parents[2] / "inventory" / "lab.toml")
    assert set(fleet.regions) == {"fsn", "ash"}
    assert fleet.nodes["fsn-2"].raid
    assert len(fleet.nodes) >= 3


def test_unknown_top_level_key_is_named_with_the_allowed_keys(tmp_path: Path) -> None:
    error = error_for(tmp_path, GOOD + "\n[extra]\nx = 1\n")
    assert error.key == "extra"
    assert "unknown key" in str(error) and "regions" in error.fix


def test_unknown_node_key_names_the_dotted_path(tmp_path: Path) -> None:
    error = error_for(tmp_path, GOOD + 'colour = "red"\n')
    assert error.key == "nodes.n1.colour"


def test_duplicate_node_is_reported_by_the_toml_parser_with_its_line(tmp_path: Path) -> None:
    error = error_for(tmp_path, GOOD + '\n[nodes.n1]\nregion = "fsn"\ndisks = ["X"]\n')
    assert "not valid TOML" in str(error)
    assert "line" in str(error)


def test_node_in_unknown_region_lists_known_regions(tmp_path: Path) -> None:
    error = error_for(tmp_path, GOOD.replace('region = "fsn"', 'region = "hel"'))
    assert error.key == "nodes.n1.region"
    assert "fsn" in error.fix and "[regions.hel]" in error.fix


@pytest.mark.parametrize("address", ["300.1.1.1", "192.0.2", "not-an-ip", "2001:db8::1"])
def test_bad_ipv4_address_is_refused(tmp_path: Path, address: str) -> None:
    error = error_for(tmp_path, GOOD.replace('"192.0.2.1"', f'"{address}"'))
    assert error.key == "nodes.n1.ipv4"
    assert address in error.problem


def test_bad_ipv6_address_is_refused(tmp_path: Path) -> None:
    error = error_for(tmp_path, GOOD + 'ipv6 = "2001:db8::zz"\n')
    assert error.key == "nodes.n1.ipv6"


def test_two_nodes_with_one_address_are_refused(tmp_path: Path) -> None:
    error = error_for(tmp_path, GOOD + '\n[nodes.n2]\nregion = "fsn"\ndisks = ["SER-2"]\n'
                      'ipv4 = "192.0.2.1"\n')
    assert error.key == "nodes.n2.ipv4" and "n1" in error.problem


def test_disk_shared_between_nodes_is_refused(tmp_path: Path) -> None:
    error = error_for(tmp_path, GOOD + '\n[nodes.n2]\nregion = "fsn"\ndisks = ["SER-1"]\n')
    assert error.key == "nodes.n2.disks"


@pytest.mark.parametrize("disks", ['[]', '["A", "B", "C"]', '["A", "A"]', '[1]', '"A"'])
def test_bad_disk_lists_are_refused(tmp_path: Path, disks: str) -> None:
    error = error_for(tmp_path, GOOD.replace('["SER-1"]', disks))
    assert error.key == "nodes.n1.disks"


def test_missing_disks_says_how_to_add_them(tmp_path: Path) -> None:
    error = error_for(tmp_path, GOOD.replace('disks = ["SER-1"]\n', ""))
    assert error.key == "nodes.n1.disks" and "missing" in error.problem


def test_unknown_provider_lists_providers(tmp_path: Path) -> None:
    error = error_for(tmp_path, GOOD.replace('provider = "lab"', 'provider = "aws"'))
    assert error.key == "regions.fsn.provider" and "hetzner-cloud" in error.fix


def test_provider_node_without_address_is_refused(tmp_path: Path) -> None:
    text = GOOD.replace('provider = "lab"', 'provider = "ovh"').replace(
        'ipv4 = "192.0.2.1"\n', "")
    error = error_for(tmp_path, text)
    assert error.key == "nodes.n1.ipv4"


@pytest.mark.parametrize(("field", "value"), [("latitude", "91.0"), ("longitude", "-181.0"),
                                              ("latitude", '"north"'), ("latitude", "true")])
def test_bad_coordinates_are_refused(tmp_path: Path, field: str, value: str) -> None:
    original = "50.47" if field == "latitude" else "12.37"
    error = error_for(tmp_path, GOOD.replace(f"{field} = {original}", f"{field} = {value}"))
    assert error.key == f"regions.fsn.{field}"


def test_bad_domain_is_refused(tmp_path: Path) -> None:
    error = error_for(tmp_path, GOOD.replace("fleet.example.com", "no_dots"))
    assert error.key == "fleet.domain"


def test_bad_node_name_is_refused(tmp_path: Path) -> None:
    error = error_for(tmp_path, GOOD.replace("[nodes.n1]", "[nodes.N_1]"))
    assert error.key == "nodes.N_1"


def test_firewall_without_ssh_is_refused(tmp_path: Path) -> None:
    error = error_for(tmp_path, GOOD.replace('domain = "fleet.example.com"',
                                             'domain = "fleet.example.com"\n'
                                             "allowed_tcp_ports = [80]"))
    assert error.key == "fleet.allowed_tcp_ports"


def test_static_network_prefix_is_checked(tmp_path: Path) -> None:
    error = error_for(tmp_path, GOOD + "\n[nodes.n1.network]\naddress = \"192.0.2.1\"\n"
                      "prefix = 33\ngateway = \"172.31.1.1\"\n")
    assert error.key == "nodes.n1.network.prefix"


def test_private_address_is_an_ipv4_interface_of_one_node(tmp_path: Path) -> None:
    fleet = load_fleet(write(tmp_path, GOOD.replace(
        'ipv4 = "192.0.2.1"', 'ipv4 = "192.0.2.1"\nprivate_address = "10.99.0.101/24"')))
    assert (fleet.nodes["n1"].private_address, fleet.nodes["n1"].private_interface) == (
        "10.99.0.101/24", "eth1")
    for value, said in (("10.99.0.101", "with its prefix length"),
                        ("10.99.0.0/24", "network's own address"),
                        ("fd00::1/64", "IPv4 address")):
        error = error_for(tmp_path, GOOD.replace(
            'ipv4 = "192.0.2.1"', f'ipv4 = "192.0.2.1"\nprivate_address = "{value}"'))
        assert error.key == "nodes.n1.private_address" and said in str(error), str(error)
    two = GOOD.replace('ipv4 = "192.0.2.1"', 'ipv4 = "192.0.2.1"\n'
                       'private_address = "10.99.0.101/24"') + (
        '\n[nodes.n2]\nregion = "fsn"\ndisks = ["SER-2"]\nipv4 = "192.0.2.2"\n'
        'private_address = "10.99.0.101/24"\n')
    error = error_for(tmp_path, two)
    assert error.key == "nodes.n2.private_address" and "'n1'" in str(error), str(error)
    error = error_for(tmp_path, GOOD.replace('ipv4 = "192.0.2.1"', 'ipv4 = "192.0.2.1"\n'
                                             'private_interface = "ens10"'))
    assert error.key == "nodes.n1.private_interface"


def test_duplicate_routed_name_is_refused(tmp_path: Path) -> None:
    error = error_for(tmp_path, GOOD.replace('[[routed]]\nname = "edge"',
                                             '[[routed]]\nname = "edge"\n\n[[routed]]\n'
                                             'name = "edge"'))
    assert error.key == "routed[1].name"


def test_admin_with_a_private_key_pasted_is_refused(tmp_path: Path) -> None:
    error = error_for(tmp_path, GOOD + '\n[[admins]]\nname = "alice"\n'
                      'keys = ["-----BEGIN OPENSSH PRIVATE KEY-----"]\n')
    assert error.key == "admins[0].keys"


def test_missing_file_says_how_to_pass_one(tmp_path: Path) -> None:
    with pytest.raises(InventoryError) as caught:
        load_fleet(tmp_path / "nope.toml")
    assert "--fleet" in str(caught.value)


def test_unknown_node_lookup_lists_known_nodes(tmp_path: Path) -> None:
    from clonefleet.errors import UnknownNodeError

    fleet = load_fleet(write(tmp_path, GOOD))
    with pytest.raises(UnknownNodeError, match="known nodes: n1"):
        fleet.node("n9")


def test_control_url_must_be_http(tmp_path: Path) -> None:
    error = error_for(tmp_path, GOOD.replace('domain = "fleet.example.com"',
                                             'domain = "fleet.example.com"\n'
                                             'control_url = "10.0.0.1:8441"'))
    assert error.key == "fleet.control_url" and "clonefleet serve" in error.fix


def test_alert_urls_must_be_urls(tmp_path: Path) -> None:
    error = error_for(tmp_path, GOOD.replace('domain = "fleet.example.com"',
                                             'domain = "fleet.example.com"\n'
                                             'alert_urls = ["ops@example.com"]'))
    assert error.key == "fleet.alert_urls"


def test_region_floor_above_its_node_count_is_refused_naming_the_region(
        tmp_path: Path) -> None:
    text = GOOD.replace('longitude = 12.37\n', 'longitude = 12.37\nmin_active = 5\n')
    error = error_for(tmp_path, text)
    assert error.key == "regions.fsn.min_active"
    assert "5 is more than the region's 1 node" in str(error)
    assert "use at most 1" in str(error)


def test_fleet_floor_above_the_node_count_is_refused(tmp_path: Path) -> None:
    text = GOOD.replace('domain = "fleet.example.com"\n',
                        'domain = "fleet.example.com"\nmin_active_total = 2\n')
    error = error_for(tmp_path, text)
    assert error.key == "fleet.min_active_total" and "use at most 1" in str(error)


def test_a_region_without_nodes_yet_keeps_its_floor(tmp_path: Path) -> None:
    text = GOOD + ('\n[regions.hel]\nprovider = "lab"\nlatitude = 60.17\nlongitude = 24.94\n'
                   'min_active = 2\n')
    assert load_fleet(write(tmp_path, text)).regions["hel"].min_active == 2
