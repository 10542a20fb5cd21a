"""tests/fleet_text.py: the fleet files it writes load as the fleet they describe."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from fleet_text import ASH, FSN, HEL, FleetNode, fleet_toml

from clonefleet.inventory import load_fleet

pytestmark = pytest.mark.unit


def test_regions_nodes_settings_routed_and_unlock_load_as_given(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(fleet_toml(
        "demo", "demo.clonefleet.test",
        [replace(FSN, min_active=0, unlock={"unexpected": "approve"}), ASH],
        [FleetNode("fsn-1", "fsn", "D-FSN1", ipv4="192.0.2.11", ipv6="2001:db8:1::11"),
         FleetNode("ash-1", "ash", "D-ASH1")],
        settings={"min_active_total": 0, "dns_grace_seconds": 2,
                  "alert_urls": ['json://127.0.0.1:1/"quoted"\\path']},
        routed=[{"name": "edge", "ttl": 5, "answers": 2}, {"name": "api"}],
        unlock={"unexpected": "after", "after": "10 minutes"}))
    fleet = load_fleet(path)

    assert list(fleet.regions) == ["fsn", "ash"] and list(fleet.nodes) == ["fsn-1", "ash-1"]
    assert (fleet.regions["fsn"].latitude, fleet.regions["fsn"].longitude) == (50.47, 12.37)
    # min_active is written only when given: ash keeps the loader's default.
    assert fleet.regions["fsn"].min_active == 0 and fleet.regions["ash"].min_active == 1
    assert fleet.nodes["fsn-1"].disks == ("D-FSN1",)
    assert (fleet.nodes["fsn-1"].ipv4, fleet.nodes["fsn-1"].ipv6) == ("192.0.2.11",
                                                                      "2001:db8:1::11")
    assert (fleet.nodes["ash-1"].ipv4, fleet.nodes["ash-1"].ipv6) == ("", "")
    assert (fleet.min_active_total, fleet.dns_grace_seconds) == (0, 2)
    assert fleet.alert_urls == ('json://127.0.0.1:1/"quoted"\\path',)
    assert [(name.name, name.ttl, name.answers) for name in fleet.routed] == [
        ("edge", 5, 2), ("api", 30, 1)]
    assert fleet.unlock.for_region("ash").unexpected == "after"
    assert fleet.unlock.for_region("fsn").unexpected == "approve"


def test_without_unlock_or_region_unlock_no_such_table_is_written() -> None:
    document = tomllib.loads(fleet_toml("t", "t.example.com", [HEL],
                                        [FleetNode("n1", "hel", "SER-1")]))
    assert "unlock" not in document and "unlock" not in document["regions"]["hel"]
    assert document["regions"]["hel"] == {"provider": "lab", "latitude": 60.17,
                                          "longitude": 24.94}
    # An empty [unlock] is written when asked for: a test may need the table present.
    assert tomllib.loads(fleet_toml("t", "t.example.com", [HEL], [], unlock={}))["unlock"] == {}
