"""`[unlock] unlockers` and `store_url` in the fleet file: known nodes, an etcd store, and the
address the unlocker nodes use (the fleet's own endpoints and prefix unless told otherwise)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest
from fleet_text import FSN, FleetNode, Value, fleet_toml

from clonefleet.errors import InventoryError, InventoryErrors
from clonefleet.inventory import Fleet, load_fleet

pytestmark = pytest.mark.unit

NODES = [FleetNode("fsn-1", "fsn", "U-FSN1"), FleetNode("nbg-1", "fsn", "U-NBG1")]
ETCD = {"state": "etcd://10.0.0.1:2379,10.0.0.2:2379/clonefleet/prod"}
# An etcd store reached over TLS, as a [state] table.
TLS_STATE = ('\n[state]\nbackend = "etcd"\nendpoints = ["https://10.0.0.1:2379"]\n'
             'ca_cert = "/etc/ca.pem"\n')


def _load(tmp_path: Path, settings: Mapping[str, Value], unlock: Mapping[str, Value],
          extra: str = "") -> Fleet:
    path = tmp_path / "u.toml"
    path.write_text(fleet_toml("u", "u.example.com", [FSN], NODES, settings=settings,
                               unlock=unlock) + extra)
    return load_fleet(path)


def _errors(tmp_path: Path, settings: Mapping[str, Value], unlock: Mapping[str, Value],
            extra: str = "") -> list[str]:
    with pytest.raises((InventoryError, InventoryErrors)) as raised:
        _load(tmp_path, settings, unlock, extra)
    error = raised.value
    return [str(item) for item in (error.errors if isinstance(error, InventoryErrors)
                                   else [error])]


def test_unlocker_nodes_use_the_fleets_etcd_endpoints_and_prefix(tmp_path: Path) -> None:
    fleet = _load(tmp_path, ETCD, {"unlockers": ["fsn-1", "nbg-1"], "unexpected": "approve"})
    assert fleet.unlockers.nodes == ("fsn-1", "nbg-1")
    assert fleet.unlockers.store_url == (
        "etcd://10.0.0.1:2379,10.0.0.2:2379/clonefleet/prod")
    # The policy keys beside them still count.
    assert fleet.unlock.default.unexpected == "approve"


def test_an_etcd_store_without_a_prefix_gives_the_unlockers_the_fleets_default_prefix(
        tmp_path: Path) -> None:
    fleet = _load(tmp_path, {"state": "etcd://10.0.0.1:2379"}, {"unlockers": ["fsn-1"]})
    assert fleet.unlockers.store_url == "etcd://10.0.0.1:2379/clonefleet/u"


def test_store_url_names_the_address_the_nodes_reach_with_the_fleets_prefix(
        tmp_path: Path) -> None:
    fleet = _load(tmp_path, ETCD, {"unlockers": ["fsn-1"],
                                  "store_url": "etcd://10.66.0.1:2379,10.66.0.2:2379"})
    assert fleet.unlockers.store_url == (
        "etcd://10.66.0.1:2379,10.66.0.2:2379/clonefleet/prod")


def test_no_unlockers_by_default(tmp_path: Path) -> None:
    fleet = _load(tmp_path, {}, {})
    assert fleet.unlockers.nodes == () and fleet.unlockers.store_url == ""


def test_unlockers_on_a_sqlite_fleet_are_refused_in_one_line_naming_the_fix(
        tmp_path: Path) -> None:
    [error] = _errors(tmp_path, {}, {"unlockers": ["fsn-1"]})
    assert "unlock.unlockers" in error and "SQLite" in error
    assert "etcd://" in error and "\n" not in error


def test_an_unknown_or_repeated_unlocker_node_is_named_with_its_index(tmp_path: Path) -> None:
    errors = _errors(tmp_path, ETCD, {"unlockers": ["fsn-1", "ash-9", "fsn-1"]})
    assert any("unlock.unlockers[1]" in error and "'ash-9'" in error and "fsn-1" in error
               for error in errors), errors
    assert any("unlock.unlockers[2]" in error and "twice" in error for error in errors), errors


def test_a_store_url_with_another_fleets_prefix_is_refused(tmp_path: Path) -> None:
    [error] = _errors(tmp_path, ETCD, {"unlockers": ["fsn-1"],
                                      "store_url": "etcd://10.66.0.1:2379/clonefleet/other"})
    assert "unlock.store_url" in error and "clonefleet/prod" in error


def test_a_malformed_store_url_is_refused(tmp_path: Path) -> None:
    [error] = _errors(tmp_path, ETCD, {"unlockers": ["fsn-1"], "store_url": "http://x:1"})
    assert "unlock.store_url" in error


def test_a_tls_etcd_store_needs_a_plain_store_url_for_the_unlockers(tmp_path: Path) -> None:
    [error] = _errors(tmp_path, {}, {"unlockers": ["fsn-1"]}, TLS_STATE)
    assert "TLS" in error and "unlock.store_url" in error
    fleet = _load(tmp_path, {}, {"unlockers": ["fsn-1"], "store_url": "etcd://10.66.0.1:2379"},
                  TLS_STATE)
    assert fleet.unlockers.store_url == "etcd://10.66.0.1:2379/clonefleet/u"


def test_unlockers_in_a_regions_unlock_table_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(fleet_toml("u", "u.example.com",
                               [replace(FSN, unlock={"unlockers": ["fsn-1"]})], NODES,
                               settings=ETCD))
    with pytest.raises(InventoryError, match=r"regions\.fsn\.unlock\.unlockers"):
        load_fleet(path)
