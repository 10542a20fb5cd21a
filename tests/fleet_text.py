"""Fleet files for tests, written from their regions and nodes.

A test names what its fleet is made of: the [fleet] name, domain and settings, the routed
names, the [unlock] policy, the regions (coordinates, min_active, a region's own unlock
policy) and the nodes (region, disk serial, addresses). `fleet_toml` writes exactly that as
TOML, in the order given, and nothing else: anything more a test needs (a [providers] or
[services.NAME] table) it appends as text, where a reader of the test sees it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# What a test writes into a fleet file: TOML's strings, numbers, booleans and lists of them.
Value = str | int | float | bool | Sequence["Value"]


@dataclass(frozen=True)
class FleetRegion:
    """One [regions.NAME] table; `unlock` is its [regions.NAME.unlock] table, if any."""

    name: str
    latitude: float
    longitude: float
    min_active: int | None = None
    provider: str = "lab"
    unlock: Mapping[str, Value] | None = None


@dataclass(frozen=True)
class FleetNode:
    """One [nodes.NAME] table with a single disk, found by its serial; an address is
    written only when given."""

    name: str
    region: str
    disk: str
    ipv4: str | None = None
    ipv6: str | None = None


# The lab's usual regions; a test changes what it needs with dataclasses.replace.
FSN = FleetRegion("fsn", 50.47, 12.37)  # Falkenstein
ASH = FleetRegion("ash", 39.04, -77.49)  # Ashburn
HEL = FleetRegion("hel", 60.17, 24.94)  # Helsinki


def fleet_toml(name: str, domain: str, regions: Sequence[FleetRegion],
               nodes: Sequence[FleetNode], *, settings: Mapping[str, Value] | None = None,
               routed: Sequence[Mapping[str, Value]] = (),
               unlock: Mapping[str, Value] | None = None) -> str:
    """The fleet file's text: [fleet] (name, domain, then `settings`), one [[routed]] table
    per entry of `routed`, [unlock] when `unlock` is given (even empty), then the regions and
    the nodes in the order given."""
    tables = [_table("[fleet]", {"name": name, "domain": domain, **(settings or {})})]
    tables += [_table("[[routed]]", entry) for entry in routed]
    if unlock is not None:
        tables.append(_table("[unlock]", unlock))
    for region in regions:
        tables.append(_table(f"[regions.{region.name}]", {
            "provider": region.provider, "latitude": region.latitude,
            "longitude": region.longitude, "min_active": region.min_active}))
        if region.unlock is not None:
            tables.append(_table(f"[regions.{region.name}.unlock]", region.unlock))
    for node in nodes:
        tables.append(_table(f"[nodes.{node.name}]", {
            "region": node.region, "disks": [node.disk], "ipv4": node.ipv4,
            "ipv6": node.ipv6}))
    return "\n" + "\n\n".join(tables) + "\n"


def _table(header: str, values: Mapping[str, Value | None]) -> str:
    """A table's header and its `key = value` lines; a None value is left out."""
    lines = [header] + [f"{key} = {_value(value)}" for key, value in values.items()
                        if value is not None]
    return "\n".join(lines)


def _value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, int | float):
        return repr(value)
    return "[" + ", ".join(_value(item) for item in value) + "]"
