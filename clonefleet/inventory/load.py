"""Load and validate `inventory/<fleet>.toml` into a `Fleet`.

Every problem is one `InventoryError` naming the file, the dotted key and the fix. Defaults
and validation live here and nowhere else.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from clonefleet.errors import InventoryError
from clonefleet.inventory.model import (
    PROVIDERS,
    Admin,
    Fleet,
    Node,
    Region,
    RoutedName,
    StaticNetwork,
)

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
DOMAIN_RE = re.compile(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")

FLEET_KEYS = {
    "name", "domain", "ssh_key", "min_active_total", "dns_grace_seconds",
    "allowed_tcp_ports", "allowed_udp_ports", "control_url", "alert_urls",
}
TOP_KEYS = {"fleet", "regions", "nodes", "routed", "admins"}
REGION_KEYS = {"provider", "location", "latitude", "longitude", "min_active"}
NODE_KEYS = {
    "region", "provider", "disks", "server_type", "server_id", "memory_mb", "disk_size_gb",
    "ipv4", "ipv6", "network", "labels",
}
NETWORK_KEYS = {"address", "prefix", "gateway", "interface"}
ROUTED_KEYS = {"name", "ttl", "answers"}
# More nearest nodes than this per answer is no longer "nearest", and keeps answers small.
MAX_ANSWERS = 8
ADMIN_KEYS = {"name", "keys"}

T = TypeVar("T")


class _Checker:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def fail(self, key: str, problem: str, fix: str) -> InventoryError:
        return InventoryError(self.path, key, problem, fix)

    def table(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {type(value).__name__}",
                            f"write it as [{key}]")
        return value

    def known_keys(self, table: dict[str, Any], allowed: set[str], prefix: str) -> None:
        for key in table:
            if key not in allowed:
                where = f"{prefix}.{key}" if prefix else key
                raise self.fail(where, "unknown key",
                                f"remove it or use one of: {', '.join(sorted(allowed))}")

    def typed(self, table: dict[str, Any], key: str, prefix: str, kind: type[T] | tuple[type, ...],
              default: Any = None, required: bool = False) -> Any:
        where = f"{prefix}.{key}" if prefix else key
        if key not in table:
            if required:
                raise self.fail(where, "missing", f"add {key} = ... to [{prefix}]")
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # TOML booleans are ints in Python; never accept one where a number is meant.
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(where, f"expected {_names(kinds)}, got a boolean", "fix its value")
        if not isinstance(value, kinds):
            raise self.fail(where, f"expected {_names(kinds)}, got {type(value).__name__}",
                            "fix its value")
        return value

    def name(self, value: str, key: str, what: str) -> str:
        if not NAME_RE.match(value):
            raise self.fail(key, f"invalid {what} name {value!r}",
                            "use lowercase letters, digits and '-' (like a DNS label)")
        return value

    def address(self, value: str, key: str, version: int) -> str:
        check: Callable[[str], Any] = (
            ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
        )
        try:
            check(value)
        except ValueError:
            example = "203.0.113.10" if version == 4 else "2001:db8::10"
            raise self.fail(key, f"invalid IPv{version} address {value!r}",
                            f"write a single address such as {example!r}") from None
        return value


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join("number" if k in (int, float) else k.__name__ for k in kinds)


def load_fleet(path: str | Path) -> Fleet:
    """Given a fleet file path, parse and validate it, return the `Fleet`."""
    path = Path(path)
    check = _Checker(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InventoryError(str(path), "", "file not found",
                             "pass --fleet with an existing inventory/<fleet>.toml") from None
    except tomllib.TOMLDecodeError as error:
        raise InventoryError(str(path), "", f"not valid TOML ({error})",
                             "fix the syntax at that line") from None

    check.known_keys(raw, TOP_KEYS, "")
    fleet_table = check.table(raw.get("fleet", {}), "fleet")
    check.known_keys(fleet_table, FLEET_KEYS, "fleet")
    fleet_name = check.name(
        check.typed(fleet_table, "name", "fleet", str, default=path.stem), "fleet.name", "fleet")
    domain = check.typed(fleet_table, "domain", "fleet", str, required=True)
    if not DOMAIN_RE.match(domain):
        raise check.fail("fleet.domain", f"invalid domain {domain!r}",
                         "use a fully qualified name such as 'fleet.example.com'")

    regions = _regions(check, check.table(raw.get("regions", {}), "regions"))
    nodes = _nodes(check, check.table(raw.get("nodes", {}), "nodes"), regions)
    routed = _routed(check, raw.get("routed", []))
    for index, entry in enumerate(routed):
        # Every node's host name <node>.<domain> is in the zone with its own address; a routed
        # name of the same name would be two rrsets for one name and break every publish.
        if entry.name in nodes:
            raise check.fail(f"routed[{index}].name",
                             f"routed name {entry.name!r} is also a node's host name "
                             f"({entry.name}.{domain})", "rename the routed name")
    admins = _admins(check, raw.get("admins", []))

    min_total = check.typed(fleet_table, "min_active_total", "fleet", int, default=1)
    if min_total < 0:
        raise check.fail("fleet.min_active_total", "must not be negative", "use 0 or more")
    ports_tcp = _ports(check, fleet_table, "allowed_tcp_ports", (22,))
    if 22 not in ports_tcp:
        raise check.fail("fleet.allowed_tcp_ports", "does not allow 22 (ssh)",
                         "keep 22 in the list or the node cannot be managed")
    control_url = check.typed(fleet_table, "control_url", "fleet", str, default="")
    if control_url and not re.match(r"^https?://[^/\s]+", control_url):
        raise check.fail("fleet.control_url", f"not an http(s) URL: {control_url!r}",
                         "use the address of `clonefleet serve`, e.g. 'https://10.66.0.1:8441'")
    alert_urls = check.typed(fleet_table, "alert_urls", "fleet", list, default=[])
    if not all(isinstance(url, str) and "://" in url for url in alert_urls):
        raise check.fail("fleet.alert_urls", "every entry must be an apprise URL",
                         "e.g. ['mailtos://user:pass@example.com', 'ntfys://topic']")
    _floors(check, regions, nodes, min_total)
    return Fleet(
        name=fleet_name,
        control_url=control_url,
        alert_urls=tuple(alert_urls),
        path=path,
        domain=domain,
        regions=regions,
        nodes=nodes,
        routed=routed,
        admins=admins,
        ssh_key=check.typed(fleet_table, "ssh_key", "fleet", str, default=""),
        min_active_total=min_total,
        dns_grace_seconds=check.typed(fleet_table, "dns_grace_seconds", "fleet", int, default=10),
        allowed_tcp_ports=ports_tcp,
        allowed_udp_ports=_ports(check, fleet_table, "allowed_udp_ports", ()),
    )


def _floors(check: _Checker, regions: dict[str, Region], nodes: dict[str, Node],
            min_total: int) -> None:
    """A floor above the number of nodes can never be met, so every drain there (a
    rollout's, smartwatch's) would be refused. A region without nodes yet is left alone."""
    for name, region in regions.items():
        count = sum(1 for node in nodes.values() if node.region == name)
        if count and region.min_active > count:
            raise check.fail(f"regions.{name}.min_active",
                             f"{region.min_active} is more than the region's {count} "
                             f"node{'s' if count != 1 else ''}, so no node there could ever "
                             "be drained", f"use at most {count}")
    if nodes and min_total > len(nodes):
        raise check.fail("fleet.min_active_total",
                         f"{min_total} is more than the fleet's {len(nodes)} nodes, so no "
                         "node could ever be drained", f"use at most {len(nodes)}")


def _ports(check: _Checker, table: dict[str, Any], key: str,
           default: tuple[int, ...]) -> tuple[int, ...]:
    ports = check.typed(table, key, "fleet", list, default=list(default))
    for port in ports:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise check.fail(f"fleet.{key}", f"invalid port {port!r}", "use numbers 1-65535")
    return tuple(ports)


def _regions(check: _Checker, table: dict[str, Any]) -> dict[str, Region]:
    if not table:
        raise check.fail("regions", "no regions defined", "add at least one [regions.NAME] table")
    regions = {}
    for name, value in table.items():
        prefix = f"regions.{name}"
        check.name(name, prefix, "region")
        body = check.table(value, prefix)
        check.known_keys(body, REGION_KEYS, prefix)
        provider = check.typed(body, "provider", prefix, str, required=True)
        _provider(check, provider, f"{prefix}.provider")
        latitude = float(check.typed(body, "latitude", prefix, (int, float), required=True))
        longitude = float(check.typed(body, "longitude", prefix, (int, float), required=True))
        if not -90 <= latitude <= 90:
            raise check.fail(f"{prefix}.latitude", f"{latitude} is out of range",
                             "use degrees between -90 and 90")
        if not -180 <= longitude <= 180:
            raise check.fail(f"{prefix}.longitude", f"{longitude} is out of range",
                             "use degrees between -180 and 180")
        min_active = check.typed(body, "min_active", prefix, int, default=1)
        if min_active < 0:
            raise check.fail(f"{prefix}.min_active", "must not be negative", "use 0 or more")
        regions[name] = Region(
            name=name, provider=provider,
            location=check.typed(body, "location", prefix, str, default=name),
            latitude=latitude, longitude=longitude, min_active=min_active,
        )
    return regions


def _provider(check: _Checker, provider: str, key: str) -> None:
    if provider not in PROVIDERS:
        raise check.fail(key, f"unknown provider {provider!r}",
                         f"use one of: {', '.join(PROVIDERS)}")


def _nodes(check: _Checker, table: dict[str, Any], regions: dict[str, Region]) -> dict[str, Node]:
    nodes: dict[str, Node] = {}
    seen_serials: dict[str, str] = {}
    seen_addresses: dict[str, str] = {}
    for name, value in table.items():
        prefix = f"nodes.{name}"
        check.name(name, prefix, "node")
        body = check.table(value, prefix)
        check.known_keys(body, NODE_KEYS, prefix)
        region = check.typed(body, "region", prefix, str, required=True)
        if region not in regions:
            raise check.fail(f"{prefix}.region", f"unknown region {region!r}",
                             f"use one of: {', '.join(sorted(regions))} or add [regions.{region}]")
        provider = check.typed(body, "provider", prefix, str, default=regions[region].provider)
        _provider(check, provider, f"{prefix}.provider")
        disks = check.typed(body, "disks", prefix, list, required=True)
        if not 1 <= len(disks) <= 2 or not all(isinstance(d, str) and d for d in disks):
            raise check.fail(f"{prefix}.disks", "expected one or two disk serials",
                             'list the serials, e.g. disks = ["S4EWNX0R123456"]')
        if len(set(disks)) != len(disks):
            raise check.fail(f"{prefix}.disks", "the same serial is listed twice",
                             "list each disk once")
        for serial in disks:
            if serial in seen_serials:
                raise check.fail(f"{prefix}.disks", f"serial {serial!r} is also a disk of node "
                                 f"{seen_serials[serial]!r}", "a disk belongs to one node")
            seen_serials[serial] = name
        ipv4 = check.typed(body, "ipv4", prefix, str, default="")
        ipv6 = check.typed(body, "ipv6", prefix, str, default="")
        for key, address, version in (("ipv4", ipv4, 4), ("ipv6", ipv6, 6)):
            if not address:
                continue
            check.address(address, f"{prefix}.{key}", version)
            if address in seen_addresses:
                raise check.fail(f"{prefix}.{key}", f"address {address} is also used by node "
                                 f"{seen_addresses[address]!r}", "give every node its own address")
            seen_addresses[address] = name
        network = None
        if "network" in body:
            network = _network(check, check.table(body["network"], f"{prefix}.network"),
                               f"{prefix}.network")
        elif provider != "lab" and not ipv4:
            raise check.fail(f"{prefix}.ipv4", "missing for a provider node",
                                 "add the server's public IPv4 address")
        memory = check.typed(body, "memory_mb", prefix, int, default=2048)
        if memory < 1024:
            raise check.fail(f"{prefix}.memory_mb", f"{memory} MiB is too small",
                             "use at least 1024 (the rescue system runs from RAM)")
        size = check.typed(body, "disk_size_gb", prefix, int, default=8)
        if size < 4:
            raise check.fail(f"{prefix}.disk_size_gb", f"{size} GiB is too small",
                             "use at least 4")
        labels = check.table(body.get("labels", {}), f"{prefix}.labels")
        if not all(isinstance(v, str) for v in labels.values()):
            raise check.fail(f"{prefix}.labels", "label values must be strings", "quote them")
        nodes[name] = Node(
            name=name, region=region, provider=provider, disks=tuple(disks),
            server_type=check.typed(body, "server_type", prefix, str, default=""),
            server_id=str(check.typed(body, "server_id", prefix, (str, int), default="")),
            memory_mb=memory, disk_size_gb=size, ipv4=ipv4, ipv6=ipv6, network=network,
            labels=dict(labels),
        )
    return nodes


def _network(check: _Checker, body: dict[str, Any], prefix: str) -> StaticNetwork:
    check.known_keys(body, NETWORK_KEYS, prefix)
    address = check.address(check.typed(body, "address", prefix, str, required=True),
                            f"{prefix}.address", 4)
    prefix_len = check.typed(body, "prefix", prefix, int, required=True)
    if not 8 <= prefix_len <= 32:
        raise check.fail(f"{prefix}.prefix", f"invalid prefix length {prefix_len}",
                         "use 8-32 (Hetzner uses 32 with an off-link gateway)")
    gateway = check.address(check.typed(body, "gateway", prefix, str, required=True),
                            f"{prefix}.gateway", 4)
    interface = check.typed(body, "interface", prefix, str, default="eth0")
    return StaticNetwork(address=address, prefix=prefix_len, gateway=gateway, interface=interface)


def _routed(check: _Checker, value: Any) -> tuple[RoutedName, ...]:
    if not isinstance(value, list):
        raise check.fail("routed", "expected an array of tables", "write [[routed]] entries")
    names: list[RoutedName] = []
    for index, item in enumerate(value):
        prefix = f"routed[{index}]"
        body = check.table(item, prefix)
        check.known_keys(body, ROUTED_KEYS, prefix)
        name = check.typed(body, "name", prefix, str, required=True)
        check.name(name, f"{prefix}.name", "routed")
        if any(existing.name == name for existing in names):
            raise check.fail(f"{prefix}.name", f"duplicate routed name {name!r}", "list it once")
        ttl = check.typed(body, "ttl", prefix, int, default=30)
        if not 1 <= ttl <= 86400:
            raise check.fail(f"{prefix}.ttl", f"invalid TTL {ttl}", "use 1-86400 seconds")
        answers = check.typed(body, "answers", prefix, int, default=1)
        if not 1 <= answers <= MAX_ANSWERS:
            raise check.fail(f"{prefix}.answers", f"invalid answer count {answers}",
                             f"use 1-{MAX_ANSWERS} nearest nodes per answer")
        names.append(RoutedName(name=name, ttl=ttl, answers=answers))
    return tuple(names)


def _admins(check: _Checker, value: Any) -> tuple[Admin, ...]:
    if not isinstance(value, list):
        raise check.fail("admins", "expected an array of tables", "write [[admins]] entries")
    admins: list[Admin] = []
    for index, item in enumerate(value):
        prefix = f"admins[{index}]"
        body = check.table(item, prefix)
        check.known_keys(body, ADMIN_KEYS, prefix)
        name = check.typed(body, "name", prefix, str, required=True)
        if not re.match(r"^[a-z_][a-z0-9_-]{0,31}$", name) or name == "root":
            raise check.fail(f"{prefix}.name", f"invalid user name {name!r}",
                             "use a lowercase Unix user name other than root")
        keys = check.typed(body, "keys", prefix, list, default=[])
        for key in keys:
            if not isinstance(key, str) or not key.startswith(("ssh-", "ecdsa-", "sk-")):
                raise check.fail(f"{prefix}.keys", f"not an SSH public key: {str(key)[:30]!r}",
                                 "paste the line from the user's id_*.pub")
        admins.append(Admin(name=name, keys=tuple(keys)))
    return tuple(admins)
