"""`[unlock] unlockers` and `store_url` in the fleet file: known nodes, an etcd store, and the
address the unlocker nodes use (the fleet's own endpoints and prefix unless told otherwise)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clonefleet.errors import InventoryError, InventoryErrors
from clonefleet.inventory import Fleet, load_fleet

pytestmark = pytest.mark.unit

NODES = """
[regions.fsn]
provider = "lab"
latitude = 50.47
longitude = 12.37

[nodes.fsn-1]
region = "fsn"
disks = ["U-FSN1"]

[nodes.nbg-1]
region = "fsn"
disks = ["U-NBG1"]
"""


def _load(tmp_path: Path, fleet: str, unlock: str, state: str = "") -> Fleet:
    path = tmp_path / "u.toml"
    path.write_text(f'[fleet]\nname = "u"\ndomain = "u.example.com"\n{fleet}\n{state}\n'
                    f"{NODES}\n[unlock]\n{unlock}\n")
    return load_fleet(path)


def _errors(tmp_path: Path, fleet: str, unlock: str, state: str = "") -> list[str]:
    with pytest.raises((InventoryError, InventoryErrors)) as raised:
        _load(tmp_path, fleet, unlock, state)
    error = raised.value
    return [str(item) for item in (error.errors if isinstance(error, InventoryErrors)
                                   else [error])]


ETCD = 'state = "etcd://10.0.0.1:2379,10.0.0.2:2379/clonefleet/prod"'


def test_unlocker_nodes_use_the_fleets_etcd_endpoints_and_prefix(tmp_path: Path) -> None:
    fleet = _load(tmp_path, ETCD, 'unlockers = ["fsn-1", "nbg-1"]\nunexpected = "approve"')
    assert fleet.unlockers.nodes == ("fsn-1", "nbg-1")
    assert fleet.unlockers.store_url == (
        "etcd://10.0.0.1:2379,10.0.0.2:2379/clonefleet/prod")
    # The policy keys beside them still count.
    assert fleet.unlock.default.unexpected == "approve"


def test_an_etcd_store_without_a_prefix_gives_the_unlockers_the_fleets_default_prefix(
        tmp_path: Path) -> None:
    fleet = _load(tmp_path, 'state = "etcd://10.0.0.1:2379"', 'unlockers = ["fsn-1"]')
    assert fleet.unlockers.store_url == "etcd://10.0.0.1:2379/clonefleet/u"


def test_store_url_names_the_address_the_nodes_reach_with_the_fleets_prefix(
        tmp_path: Path) -> None:
    fleet = _load(tmp_path, ETCD, 'unlockers = ["fsn-1"]\n'
                                  'store_url = "etcd://10.66.0.1:2379,10.66.0.2:2379"')
    assert fleet.unlockers.store_url == (
        "etcd://10.66.0.1:2379,10.66.0.2:2379/clonefleet/prod")


def test_no_unlockers_by_default(tmp_path: Path) -> None:
    fleet = _load(tmp_path, "", "")
    assert fleet.unlockers.nodes == () and fleet.unlockers.store_url == ""


def test_unlockers_on_a_sqlite_fleet_are_refused_in_one_line_naming_the_fix(
        tmp_path: Path) -> None:
    [error] = _errors(tmp_path, "", 'unlockers = ["fsn-1"]')
    assert "unlock.unlockers" in error and "SQLite" in error
    assert "etcd://" in error and "\n" not in error


def test_an_unknown_or_repeated_unlocker_node_is_named_with_its_index(tmp_path: Path) -> None:
    errors = _errors(tmp_path, ETCD, 'unlockers = ["fsn-1", "ash-9", "fsn-1"]')
    assert any("unlock.unlockers[1]" in error and "'ash-9'" in error and "fsn-1" in error
               for error in errors), errors
    assert any("unlock.unlockers[2]" in error and "twice" in error for error in errors), errors


def test_a_store_url_with_another_fleets_prefix_is_refused(tmp_path: Path) -> None:
    [error] = _errors(tmp_path, ETCD, 'unlockers = ["fsn-1"]\n'
                                      'store_url = "etcd://10.66.0.1:2379/clonefleet/other"')
    assert "unlock.store_url" in error and "clonefleet/prod" in error


def test_a_malformed_store_url_is_refused(tmp_path: Path) -> None:
    [error] = _errors(tmp_path, ETCD, 'unlockers = ["fsn-1"]\nstore_url = "http://x:1"')
    assert "unlock.store_url" in error


def test_a_tls_etcd_store_needs_a_plain_store_url_for_the_unlockers(tmp_path: Path) -> None:
    tls = ('[state]\nbackend = "etcd"\nendpoints = ["https://10.0.0.1:2379"]\n'
           'ca_cert = "/etc/ca.pem"\n')
    [error] = _errors(tmp_path, "", 'unlockers = ["fsn-1"]', tls)
    assert "TLS" in error and "unlock.store_url" in error
    fleet = _load(tmp_path, "", 'unlockers = ["fsn-1"]\nstore_url = "etcd://10.66.0.1:2379"',
                  tls)
    assert fleet.unlockers.store_url == "etcd://10.66.0.1:2379/clonefleet/u"


def test_unlockers_in_a_regions_unlock_table_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(f'[fleet]\nname = "u"\ndomain = "u.example.com"\n{ETCD}\n{NODES}\n'
                    '[regions.fsn.unlock]\nunlockers = ["fsn-1"]\n')
    with pytest.raises(InventoryError, match=r"regions\.fsn\.unlock\.unlockers"):
        load_fleet(path)
