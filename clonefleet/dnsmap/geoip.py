"""The MaxMind-format database PowerDNS's `pickclosest` needs.

`pickclosest` looks up the client (or its ECS subnet) *and every candidate address* in the
GeoIP databases, so the nodes' own addresses must be in one, at their region's coordinates.
This module writes that database from the inventory. Client locations come from a second
database listed after it in `geoip-database-files` (e.g. GeoLite2-City): PowerDNS asks the
files in order until one knows the address. Extra networks can also be written into this one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from clonefleet.dnsmap.errors import DnsError
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


def build_geoip_database(
    fleet: Fleet,
    path: str | Path,
    extra_networks: Mapping[str, tuple[float, float]] | None = None,
) -> Path:
    """Given the fleet (and optional CIDR → (latitude, longitude)), write an mmdb file.

    Written to a temporary name and renamed, so a PowerDNS starting meanwhile never reads half
    a file. Returns the path.
    """
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    path = Path(path)
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City",
                        description={"en": f"clonefleet {fleet.name} node locations"})
    # Nodes last: a later insert wins, and a node's own location must never be overridden.
    for network, (latitude, longitude) in (extra_networks or {}).items():
        try:
            networks = IPSet([network])
        except Exception as error:  # netaddr raises several unrelated types
            raise DnsError(f"invalid network {network!r} for the GeoIP database ({error}); "
                           "write a CIDR such as 203.0.113.0/24") from None
        writer.insert_network(networks, _location(latitude, longitude))
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
