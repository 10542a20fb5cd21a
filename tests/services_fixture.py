"""A three-node fleet in two regions with its state store and secret store, for the mesh and
database services' tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fleet_text import ASH, FSN, FleetNode, fleet_toml

from clonefleet.inventory import Fleet, load_fleet
from clonefleet.keystore import Keystore
from clonefleet.secrets import SecretStore, open_secrets
from clonefleet.services import ServiceContext
from clonefleet.state import SqliteStateStore

FLEET = fleet_toml(
    "t", "fleet.example.com", [FSN, ASH],
    [FleetNode("fsn-1", "fsn", "SER-1", ipv4="192.0.2.11", ipv6="2001:db8:1::11"),
     FleetNode("fsn-2", "fsn", "SER-2", ipv6="2001:db8:1::12"),
     FleetNode("ash-1", "ash", "SER-3")])


@dataclass
class ServiceFleet:
    folder: Path
    fleet: Fleet
    store: SqliteStateStore
    secrets: SecretStore

    def context(self, node: str) -> ServiceContext:
        return ServiceContext(self.fleet, self.fleet.node(node), self.store, self.secrets)

    def reload(self, extra: str = "") -> Fleet:
        """Load the fleet file again with `extra` appended (more nodes, [services] tables)."""
        path = self.folder / "fleet.toml"
        path.write_text(FLEET + extra)
        self.fleet = load_fleet(path)
        return self.fleet


def service_fleet(folder: Path, extra: str = "", fleet_extra: str = "") -> ServiceFleet:
    """The fleet with `extra` appended and `fleet_extra` added to its [fleet] table."""
    path = folder / "fleet.toml"
    path.write_text(FLEET.replace("[fleet]\n", "[fleet]\n" + fleet_extra, 1) + extra)
    secrets = open_secrets(folder / "state", Keystore(folder / "state" / "keystore",
                                                      folder / "age.key"))
    return ServiceFleet(folder, load_fleet(path), SqliteStateStore(folder / "state.sqlite"),
                        secrets)
