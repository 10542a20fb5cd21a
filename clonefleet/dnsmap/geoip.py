"""The MaxMind-format database of node (and optionally client) locations.

The routed names' LUA program gets the client's location (or its ECS subnet's) from the GeoIP
databases through `latlon()`; the candidates' coordinates are written into the program. The
nodes' own addresses are in this database at their region's coordinates so that `verify` can
ask "from a region" with a node address as the client subnet.
This module writes that database from the inventory. Client locations come from a second
database listed after it in `geoip-database-files` (e.g. GeoLite2-City): PowerDNS asks the
files in order until one knows the address. Extra networks can also be written into this one.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clonefleet.errors import ConfigError
from clonefleet.inventory import Fleet

# PowerDNS's mmdb reader refuses a location without `accuracy_radius` (it then reports the
# address as unknown), so every entry carries one, in kilometres.
ACCURACY_KM = 50


def _location(latitude: float, longitude: float) -> dict[str, object]:
    from mmdb_writer import MmdbF64, MmdbU16

    return {
        "location": {
            "latitude": MmdbF64(latitude),
            "longitude": MmdbF64(longitude),
            "accuracy_radius": MmdbU16(ACCURACY_KM),
        }
    }


def parse_network(item: str) -> tuple[str, tuple[float, float]]:
    """`CIDR=LAT,LON` (the CLI's --network) → (CIDR, (latitude, longitude)); `ConfigError`
    naming the bad part otherwise."""
    example = "such as 203.0.113.0/24=52.52,13.40"
    cidr, separator, coordinates = item.partition("=")
    parts = coordinates.split(",")
    if not separator or len(parts) != 2:
        raise ConfigError(f"--network {item!r}: expected CIDR=LAT,LON {example}")
    try:
        latitude, longitude = float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError(f"--network {item!r}: latitude and longitude must be numbers, "
                          f"{example}") from None
    check_network(cidr, latitude, longitude, f"--network {item!r}")
    return cidr.strip(), (latitude, longitude)


def check_network(cidr: str, latitude: float, longitude: float, where: str) -> None:
    """Refuse a CIDR that is not one, or coordinates off the globe (`ConfigError`)."""
    try:
        ipaddress.ip_network(cidr.strip(), strict=False)
    except ValueError:
        raise ConfigError(f"{where}: {cidr!r} is not a network; write a CIDR such as "
                          "203.0.113.0/24 or 2001:db8::/48") from None
    if not -90 <= latitude <= 90:
        raise ConfigError(f"{where}: latitude {latitude:g} is off the globe; use -90 to 90")
    if not -180 <= longitude <= 180:
        raise ConfigError(f"{where}: longitude {longitude:g} is off the globe; use -180 to 180")


def build_geoip_database(
    fleet: Fleet,
    path: str | Path,
    extra_networks: Mapping[str, tuple[float, float]] | None = None,
    build_epoch: int | None = None,
) -> Path:
    """Given the fleet (and optional CIDR → (latitude, longitude)), write an mmdb file.

    Written to a temporary name and renamed, so a PowerDNS starting meanwhile never reads half
    a file. Returns the path. Raises `ConfigError` for a bad network or coordinates.
    `build_epoch` fixes the file's build time (default: now), so the same fleet gives the same
    bytes: a deploy that ships the file then changes nothing when the fleet did not change.
    """
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    class Writer(MMDBWriter):
        def _build_meta(self) -> dict[str, Any]:
            meta: dict[str, Any] = super()._build_meta()
            if build_epoch is not None:
                meta["build_epoch"] = build_epoch
            return meta

    path = Path(path)
    writer = Writer(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City",
                    description={"en": f"clonefleet {fleet.name} node locations"})
    # Nodes last: a later insert wins, and a node's own location must never be overridden.
    for network, (latitude, longitude) in (extra_networks or {}).items():
        check_network(network, latitude, longitude, f"GeoIP network {network}")
        cidr = str(ipaddress.ip_network(network.strip(), strict=False))
        writer.insert_network(IPSet([cidr]), _location(latitude, longitude))
    for node in fleet.nodes.values():
        region = fleet.regions[node.region]
        for address, bits in ((node.ipv4, 32), (node.ipv6, 128)):
            if address:
                writer.insert_network(IPSet([f"{address}/{bits}"]),
                                      _location(region.latitude, region.longitude))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer.to_db_file(str(temporary))
    temporary.replace(path)
    return path
