"""Load and validate `inventory/<fleet>.toml` into a `Fleet`.

Every problem is one `InventoryError` naming the file, the dotted key and the fix, and the
loader reports every problem of the file at once (`InventoryErrors`, one line each): a check
that fails records its error and the loader goes on with what it can still check. Defaults
and validation live here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from clonefleet.errors import InventoryError, InventoryErrors
from clonefleet.inventory.model import (
    Admin,
    Fleet,
    Node,
    Region,
    RoutedName,
    StaticNetwork,
    UnlockerNodes,
)
from clonefleet.providers.base import ProviderConfig
from clonefleet.providers.registry import (
    COMMON_SETTINGS,
    DRIVERS,
    ENV_NAME_RE,
    Driver,
    Setting,
    missing_credentials,
)
from clonefleet.providers.routes import LabRoutes
from clonefleet.state.config import SQLITE, StateConfig, parse_state_table, parse_state_url
from clonefleet.unlockd.policy import FleetUnlockPolicy, parse_policy

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
DOMAIN_RE = re.compile(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
# Keys that hold a secret: never accepted in the fleet file, whatever the driver.
SECRET_RE = re.compile(r"(token|password|passwd|secret|api_?key|application_key|"
                       r"consumer_key|credential|user)s?$")

FLEET_KEYS = {
    "name", "domain", "ssh_key", "min_active_total", "dns_grace_seconds",
    "allowed_tcp_ports", "allowed_udp_ports", "control_url", "alert_urls", "state",
    "controller_addresses",
}
# Settings that moved: the old place is named with the new one instead of "unknown key".
MOVED_KEYS = {
    "services.mesh.controller_addresses": "[fleet] controller_addresses",
    "services.dns.api_allow_from": "[fleet] controller_addresses",
}
TOP_KEYS = {"fleet", "regions", "nodes", "routed", "admins", "providers", "services", "state",
            "unlock"}
REGION_KEYS = {"provider", "location", "latitude", "longitude", "min_active", "unlock"}
NODE_KEYS = {
    "region", "provider", "disks", "server_type", "server_id", "memory_mb", "disk_size_gb",
    "ipv4", "ipv6", "network", "labels", "private_address", "private_interface",
}
NETWORK_KEYS = {"address", "prefix", "gateway", "interface", "ipv6_address", "ipv6_gateway"}
ROUTED_KEYS = {"name", "ttl", "answers"}
# More nearest nodes than this per answer is no longer "nearest", and keeps answers small.
MAX_ANSWERS = 8
ADMIN_KEYS = {"name", "keys"}
# [unlock] keys that place unlockers, beside the policy's keys (`clonefleet.unlockd.policy`).
UNLOCKER_KEYS = ("unlockers", "store_url")

T = TypeVar("T")


class _Checker:
    """Records every problem found; each check returns a usable value (its default, or
    None for a missing required key) so that the loader can go on checking."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.errors: list[InventoryError] = []

    def fail(self, key: str, problem: str, fix: str) -> None:
        self.errors.append(InventoryError(self.path, key, problem, fix))

    def table(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(key, f"expected a table, got {type(value).__name__}",
                      f"write it as [{key}]")
            return {}
        return value

    def known_keys(self, table: dict[str, Any], allowed: set[str] | Mapping[str, Any],
                   prefix: str) -> None:
        for key in table:
            if key not in allowed:
                where = f"{prefix}.{key}" if prefix else key
                if where in MOVED_KEYS:
                    self.fail(where, f"moved to {MOVED_KEYS[where]}",
                              "write the same list there as controller_addresses")
                    continue
                self.fail(where, "unknown key",
                          f"remove it or use one of: {', '.join(sorted(allowed))}")

    def typed(self, table: dict[str, Any], key: str, prefix: str, kind: type[T] | tuple[type, ...],
              default: Any = None, required: bool = False) -> Any:
        """The value of `key`, or `default` when it is absent or wrong (the error recorded);
        None for a missing or wrong required key."""
        where = f"{prefix}.{key}" if prefix else key
        if key not in table:
            if required:
                self.fail(where, "missing", f"add {key} = ... to [{prefix}]")
                return None
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        fallback = None if required else default
        # TOML booleans are ints in Python; never accept one where a number is meant.
        if isinstance(value, bool) and bool not in kinds:
            self.fail(where, f"expected {_names(kinds)}, got a boolean", "fix its value")
            return fallback
        if not isinstance(value, kinds):
            self.fail(where, f"expected {_names(kinds)}, got {type(value).__name__}",
                      "fix its value")
            return fallback
        return value

    def name(self, value: str, key: str, what: str) -> bool:
        if not NAME_RE.match(value):
            self.fail(key, f"invalid {what} name {value!r}",
                      "use lowercase letters, digits and '-' (like a DNS label)")
            return False
        return True

    def address(self, value: str | None, key: str, version: int) -> bool:
        if value is None:
            return False
        check: Callable[[str], Any] = (
            ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
        )
        try:
            check(value)
        except ValueError:
            example = "203.0.113.10" if version == 4 else "2001:db8::10"
            self.fail(key, f"invalid IPv{version} address {value!r}",
                      f"write a single address such as {example!r}")
            return False
        return True

    def raise_errors(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise InventoryErrors(self.errors)


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join("number" if k in (int, float) else k.__name__ for k in kinds)


def load_fleet(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Fleet:
    """Given a fleet file path, parse and validate it, return the `Fleet`.

    Raises `InventoryError` for one problem and `InventoryErrors` for several. With
    `environ`, also checks that every credential variable the used providers name is set
    there (`clonefleet check` does; commands check when a driver first needs one).
    """
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
    fleet_name = check.typed(fleet_table, "name", "fleet", str, default=path.stem)
    check.name(fleet_name, "fleet.name", "fleet")
    domain = check.typed(fleet_table, "domain", "fleet", str, required=True)
    if domain is not None and not DOMAIN_RE.match(domain):
        check.fail("fleet.domain", f"invalid domain {domain!r}",
                   "use a fully qualified name such as 'fleet.example.com'")

    providers = _Providers(check, path, fleet_name,
                           check.table(raw.get("providers", {}), "providers"))
    regions = _regions(check, check.table(raw.get("regions", {}), "regions"), providers)
    nodes = _nodes(check, check.table(raw.get("nodes", {}), "nodes"), regions, providers)
    routed = _routed(check, raw.get("routed", []))
    for index, entry in enumerate(routed):
        # Every node's host name <node>.<domain> is in the zone with its own address; a routed
        # name of the same name would be two rrsets for one name and break every publish.
        if entry.name in nodes:
            check.fail(f"routed[{index}].name",
                       f"routed name {entry.name!r} is also a node's host name "
                       f"({entry.name}.{domain})", "rename the routed name")
    admins = _admins(check, raw.get("admins", []))
    services = _services(check, check.table(raw.get("services", {}), "services"))
    _check_services(check, services, nodes)

    min_total = check.typed(fleet_table, "min_active_total", "fleet", int, default=1)
    if min_total < 0:
        check.fail("fleet.min_active_total", "must not be negative", "use 0 or more")
    ports_tcp = _ports(check, fleet_table, "allowed_tcp_ports", (22,))
    if 22 not in ports_tcp:
        check.fail("fleet.allowed_tcp_ports", "does not allow 22 (ssh)",
                   "keep 22 in the list or the node cannot be managed")
    control_url = check.typed(fleet_table, "control_url", "fleet", str, default="")
    if control_url and not re.match(r"^https?://[^/\s]+", control_url):
        check.fail("fleet.control_url", f"not an http(s) URL: {control_url!r}",
                   "use the address of `clonefleet serve`, e.g. 'https://10.66.0.1:8441'")
    alert_urls = check.typed(fleet_table, "alert_urls", "fleet", list, default=[])
    if not all(isinstance(url, str) and "://" in url for url in alert_urls):
        check.fail("fleet.alert_urls", "every entry must be an apprise URL",
                   "e.g. ['mailtos://user:pass@example.com', 'ntfys://topic']")
    controller = _controller_addresses(check, fleet_table)
    _floors(check, regions, nodes, min_total)
    state = _state(check, fleet_table, raw, fleet_name)
    unlock = _unlock(check, raw)
    unlockers = _unlockers(check, raw, nodes, state)
    used = {name: config for name, config in providers.configs.items()
            if any(node.provider == name for node in nodes.values())
            or any(region.provider == name for region in regions.values())}
    if environ is not None:
        for config in used.values():
            check.errors += missing_credentials(config, environ)
    check.raise_errors()
    return Fleet(
        name=fleet_name,
        control_url=control_url,
        alert_urls=tuple(alert_urls),
        controller_addresses=controller,
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
        providers=providers.configs,
        services=services,
        state=state,
        unlock=unlock,
        unlockers=unlockers,
    )


def _state(check: _Checker, fleet_table: dict[str, Any], raw: dict[str, Any],
           fleet_name: str) -> StateConfig:
    """`[fleet] state = "URL"` or a `[state]` table (never both); SQLite when neither."""
    url = check.typed(fleet_table, "state", "fleet", str, default=None)
    table = check.table(raw["state"], "state") if "state" in raw else None
    if url is not None and table is not None:
        check.fail("fleet.state", "the state store is set twice ([fleet] state and [state])",
                   "keep one of them")
        return SQLITE
    if url is not None:
        config, problems = parse_state_url(url)
    elif table is not None:
        config, problems = parse_state_table(table)
    else:
        return SQLITE
    for key, problem, fix in problems:
        check.fail(key, problem, fix)
    if config.backend == "etcd" and not config.prefix:
        config = dataclasses.replace(config, prefix=f"clonefleet/{fleet_name}")
    return config


def _unlock(check: _Checker, raw: dict[str, Any]) -> FleetUnlockPolicy:
    """`[unlock]` and each `[regions.NAME.unlock]` (its keys over the fleet's)."""
    table = {key: value for key, value in check.table(raw.get("unlock", {}), "unlock").items()
             if key not in UNLOCKER_KEYS}
    default, problems = parse_policy(table, "unlock")
    regions = {}
    for name, body in (raw.get("regions") or {}).items():
        if isinstance(body, dict) and "unlock" in body:
            key = f"regions.{name}.unlock"
            regions[name], more = parse_policy(check.table(body["unlock"], key), key, default)
            problems += more
    for key, problem, fix in problems:
        check.fail(key, problem, fix)
    return FleetUnlockPolicy(default, regions)


def _unlockers(check: _Checker, raw: dict[str, Any], nodes: dict[str, Node],
               state: StateConfig) -> UnlockerNodes:
    """`[unlock] unlockers` (known nodes, each once) and the store's address for them: an
    unlocker reads everything from the shared etcd store, so a SQLite fleet has none."""
    found = raw.get("unlock")
    table: dict[str, Any] = found if isinstance(found, dict) else {}
    names = check.typed(table, "unlockers", "unlock", list, default=[])
    url = check.typed(table, "store_url", "unlock", str, default="")
    chosen: list[str] = []
    for index, name in enumerate(names):
        if not isinstance(name, str) or name not in nodes:
            known = ", ".join(sorted(nodes)) or "none"
            check.fail(f"unlock.unlockers[{index}]", f"{name!r} is not a node of this fleet",
                       f"use node names ({known})")
        elif name in chosen:
            check.fail(f"unlock.unlockers[{index}]", f"{name!r} is listed twice", "list it once")
        else:
            chosen.append(name)
    if not names and not url:
        return UnlockerNodes()
    if state.backend != "etcd":
        check.fail("unlock.unlockers" if names else "unlock.store_url",
                   "unlockers read the shared etcd store, but this fleet's state is SQLite "
                   "on the controller", 'set [fleet] state = "etcd://HOST:PORT/PREFIX" '
                   "(docs/state.md), or remove it")
        return UnlockerNodes()
    if url:
        config, problems = parse_state_url(url, "unlock.store_url")
        for key, problem, fix in problems:
            check.fail(key, problem, fix)
        if problems:
            return UnlockerNodes()
        if config.backend != "etcd":
            check.fail("unlock.store_url", f"{url!r} is not an etcd address",
                       "write etcd://HOST:PORT[,HOST:PORT...] as the nodes reach the store")
            return UnlockerNodes()
        if config.prefix and config.prefix.strip("/") != state.prefix.strip("/"):
            check.fail("unlock.store_url", f"prefix {config.prefix!r} is not the fleet's "
                       f"({state.prefix!r}): the unlockers would read another fleet",
                       f"end it with /{state.prefix.strip('/')} or leave the prefix out")
            return UnlockerNodes()
        hosts = [endpoint.split("://", 1)[1] for endpoint in config.endpoints]
    else:
        if state.ca_cert or state.cert or any(endpoint.startswith("https://")
                                              for endpoint in state.endpoints):
            check.fail("unlock.unlockers", "the fleet's etcd store uses TLS, and an unlocker "
                       "reaches etcd over plain http only", "set unlock.store_url to an "
                       "etcd://HOST:PORT address the nodes reach without TLS (e.g. over the "
                       "mesh)")
            return UnlockerNodes()
        hosts = [endpoint.split("://", 1)[1] for endpoint in state.endpoints]
    return UnlockerNodes(tuple(chosen),
                         f"etcd://{','.join(hosts)}/{state.prefix.strip('/')}")


def _floors(check: _Checker, regions: dict[str, Region], nodes: dict[str, Node],
            min_total: int) -> None:
    """A floor above the number of nodes can never be met, so every drain there (a
    rollout's, smartwatch's) would be refused. A region without nodes yet is left alone."""
    for name, region in regions.items():
        count = sum(1 for node in nodes.values() if node.region == name)
        if count and region.min_active > count:
            check.fail(f"regions.{name}.min_active",
                       f"{region.min_active} is more than the region's {count} "
                       f"node{'s' if count != 1 else ''}, so no node there could ever "
                       "be drained", f"use at most {count}")
    if nodes and min_total > len(nodes):
        check.fail("fleet.min_active_total",
                   f"{min_total} is more than the fleet's {len(nodes)} nodes, so no "
                   "node could ever be drained", f"use at most {len(nodes)}")


def _ports(check: _Checker, table: dict[str, Any], key: str,
           default: tuple[int, ...]) -> tuple[int, ...]:
    ports = check.typed(table, key, "fleet", list, default=list(default))
    for port in ports:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            check.fail(f"fleet.{key}", f"invalid port {port!r}", "use numbers 1-65535")
            return default
    return tuple(ports)


def _secret_fix(driver: Driver, key: str) -> str:
    """How to give `driver` the secret someone put in the fleet file as `key`."""
    variables = [name for name, setting in driver.settings.items() if setting.env_var]
    stem = key.rstrip("s")
    for name in variables:
        if name == f"{stem}_env":
            return (f"remove it and export the secret in {driver.settings[name].default} "
                    f"(or name another variable with {name} = \"VARIABLE\")")
    if variables:
        return ("remove it; " + ", ".join(variables) + " name the environment variables "
                "holding the secrets")
    if driver.credentials:
        return f"remove it; {driver.credentials}"
    return f"remove it; the {driver.name} driver needs no credentials"


class _Providers:
    """The `[providers.NAME]` tables, and the names regions and nodes give in `provider`."""

    def __init__(self, check: _Checker, path: Path, fleet_name: str,
                 tables: dict[str, Any]) -> None:
        self.check, self.path, self.fleet_name = check, path, fleet_name
        self.configs: dict[str, ProviderConfig] = {}
        # name -> driver, or None when its table names an unknown driver (already reported)
        self.drivers: dict[str, str | None] = {}
        for name, value in tables.items():
            self.drivers[name] = self._table(name, check.table(value, f"providers.{name}"))

    def _table(self, name: str, body: dict[str, Any]) -> str | None:
        check, prefix = self.check, f"providers.{name}"
        check.name(name, prefix, "provider")
        driver_name = check.typed(body, "driver", prefix, str, default=name)
        driver = DRIVERS.get(driver_name)
        if driver is None:
            if "driver" in body:
                check.fail(f"{prefix}.driver", f"unknown driver {driver_name!r}",
                           f"use one of: {', '.join(sorted(DRIVERS))}")
            else:
                check.fail(f"{prefix}.driver", f"missing, and {name!r} is no driver's name",
                           f"add driver = one of: {', '.join(sorted(DRIVERS))}")
            return None
        allowed = {**COMMON_SETTINGS, **driver.settings}
        for key in body:
            if key in allowed:
                continue
            if SECRET_RE.search(key):
                check.fail(f"{prefix}.{key}", "credentials never go in the fleet file",
                           _secret_fix(driver, key))
            else:
                check.fail(f"{prefix}.{key}", f"unknown setting of driver {driver.name}",
                           f"remove it or use one of: {', '.join(sorted(allowed))}")
        self.configs[name] = self._config(name, driver, body)
        return driver.name

    def _config(self, name: str, driver: Driver, body: dict[str, Any]) -> ProviderConfig:
        check, prefix = self.check, f"providers.{name}"
        settings: dict[str, Any] = {}
        allowed: dict[str, Setting] = {**COMMON_SETTINGS, **driver.settings}
        for key, setting in allowed.items():
            if key == "driver":
                continue
            value = check.typed(body, key, prefix, setting.kind, default=setting.default,
                                required=setting.required)
            if key not in body and isinstance(value, str):
                value = value.replace("{fleet}", self.fleet_name)
            if setting.env_var and key in body and isinstance(value, str) \
                    and not ENV_NAME_RE.match(value):
                # Never echo the value: it may be the secret itself.
                check.fail(f"{prefix}.{key}", "is not an environment variable name (a secret "
                           "pasted here?)", f"write the variable's name, e.g. {key} = "
                           f"\"{setting.default}\", and export the secret in it")
                value = setting.default
            if value is not None and _choice(check, setting, value, f"{prefix}.{key}"):
                settings[key] = value
        limit = settings.get("max_parallel")
        if isinstance(limit, int) and limit < 1:
            check.fail(f"{prefix}.max_parallel", f"{limit} would let no node be provisioned",
                       "set 1 or more, or remove it for no limit of the provider's own")
        if settings.get("lab_routes"):
            routes = LabRoutes(self._routes_file)
            return ProviderConfig(name=name, driver=driver.name, settings=settings,
                                  fleet_path=self.path, fleet_name=self.fleet_name,
                                  route=routes, forwards=routes.forwards)
        return ProviderConfig(name=name, driver=driver.name, settings=settings,
                              fleet_path=self.path, fleet_name=self.fleet_name)

    def _routes_file(self) -> Path:
        from clonefleet.paths import fleet_state_dir
        from clonefleet.providers.routes import routes_path

        return routes_path(fleet_state_dir(self.fleet_name))

    def resolve(self, name: str, key: str) -> Driver | None:
        """The driver behind provider `name` (a table, or a driver named directly)."""
        if name in self.drivers:
            driver = self.drivers[name]
            return DRIVERS[driver] if driver else None
        if name in DRIVERS:
            self.drivers[name] = name
            self.configs[name] = self._config(name, DRIVERS[name], {})
            return DRIVERS[name]
        tables = [table for table in self.drivers if table not in DRIVERS]
        known = ", ".join(sorted(DRIVERS) + sorted(tables))
        self.check.fail(key, f"unknown provider {name!r}",
                        f"use one of: {known}, or add a [providers.{name}] table with "
                        "driver = ...")
        self.drivers[name] = None  # reported once
        return None


def _regions(check: _Checker, table: dict[str, Any],
             providers: _Providers) -> dict[str, Region]:
    if not table:
        check.fail("regions", "no regions defined", "add at least one [regions.NAME] table")
    regions = {}
    for name, value in table.items():
        prefix = f"regions.{name}"
        check.name(name, prefix, "region")
        body = check.table(value, prefix)
        check.known_keys(body, REGION_KEYS, prefix)
        provider = check.typed(body, "provider", prefix, str, required=True)
        if provider is not None:
            providers.resolve(provider, f"{prefix}.provider")
        latitude = float(check.typed(body, "latitude", prefix, (int, float), required=True)
                         or 0.0)
        longitude = float(check.typed(body, "longitude", prefix, (int, float), required=True)
                          or 0.0)
        if not -90 <= latitude <= 90:
            check.fail(f"{prefix}.latitude", f"{latitude} is out of range",
                       "use degrees between -90 and 90")
        if not -180 <= longitude <= 180:
            check.fail(f"{prefix}.longitude", f"{longitude} is out of range",
                       "use degrees between -180 and 180")
        min_active = check.typed(body, "min_active", prefix, int, default=1)
        if min_active < 0:
            check.fail(f"{prefix}.min_active", "must not be negative", "use 0 or more")
        regions[name] = Region(
            name=name, provider=provider or "",
            location=check.typed(body, "location", prefix, str, default=name),
            latitude=latitude, longitude=longitude, min_active=min_active,
        )
    return regions


def _node_keys(check: _Checker, body: dict[str, Any], prefix: str, node: str,
               provider: str, driver: Driver | None) -> dict[str, Any]:
    """Check the node's keys; return the driver's own keys it sets, validated."""
    own = dict(driver.node_keys) if driver else {}
    others = {key: name for name, other in DRIVERS.items() for key in other.node_keys
              if driver is not None and other is not driver}
    for key in body:
        if key in NODE_KEYS or key in own:
            continue
        if driver is None and any(key in other.node_keys for other in DRIVERS.values()):
            continue  # the provider itself is unknown (reported); its keys are unknowable
        if key in others:
            assert driver is not None
            usable = ", ".join(sorted(driver.node_keys)) or "none"
            check.fail(f"{prefix}.{key}", f"a {others[key]} key, but node {node}'s provider "
                       f"{provider!r} uses driver {driver.name}",
                       f"remove it (driver {driver.name} node keys: {usable})")
        else:
            check.fail(f"{prefix}.{key}", "unknown key", "remove it or use one of: "
                       f"{', '.join(sorted(NODE_KEYS | set(own)))}")
    settings: dict[str, Any] = {}
    for key, setting in own.items():
        kind = setting.kind
        if key in NODE_KEYS:  # a generic key (server_type): checked once, with the others
            if isinstance(body.get(key), str) and body[key]:
                settings[key] = body[key]
            continue
        value = check.typed(body, key, prefix, kind, required=setting.required)
        if value is not None and _choice(check, setting, value, f"{prefix}.{key}"):
            settings[key] = value
    return settings


def _controller_addresses(check: _Checker,
                          fleet_table: dict[str, Any]) -> tuple[str, ...]:
    """`[fleet] controller_addresses` as networks ("203.0.113.7/32"), one error per bad entry."""
    values = check.typed(fleet_table, "controller_addresses", "fleet", list, default=[])
    networks = []
    for index, value in enumerate(values):
        try:
            if not isinstance(value, str):
                raise TypeError(value)
            networks.append(str(ipaddress.ip_network(value.strip(), strict=False)))
        except (TypeError, ValueError):
            check.fail(f"fleet.controller_addresses[{index}]",
                       f"{value!r} is not an address or network",
                       'use e.g. "203.0.113.7" or "2001:db8::/64"')
    return tuple(sorted(set(networks)))


def _services(check: _Checker, table: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every known service's settings, defaults filled in, from `[services.NAME]` tables."""
    from clonefleet.services.registry import SETTINGS

    check.known_keys(table, SETTINGS, "services")
    result: dict[str, dict[str, Any]] = {}
    for name, settings in SETTINGS.items():
        prefix = f"services.{name}"
        body = check.table(table.get(name, {}), prefix)
        check.known_keys(body, settings, prefix)
        values: dict[str, Any] = {}
        for key, setting in settings.items():
            value = check.typed(body, key, prefix, setting.kind, default=setting.default,
                                required=setting.required)
            if value is not None and key in body and isinstance(value, str):
                _choice(check, setting, value, f"{prefix}.{key}")
            values[key] = value
        result[name] = values
    return result


def _check_services(check: _Checker, services: dict[str, dict[str, Any]],
                    nodes: dict[str, Node]) -> None:
    """What each service checks of its settings against the rest of the fleet file."""
    from clonefleet.services.registry import CHECKS

    for name, service_check in CHECKS.items():
        if name in services:
            check.errors += service_check(check.path, services[name], nodes)


def _choice(check: _Checker, setting: Setting, value: Any, where: str) -> bool:
    """Whether `value` is one of the setting's choices (any value when it has none)."""
    if not setting.choices or value in setting.choices:
        return True
    key = where.rsplit(".", 1)[-1]
    check.fail(where, f"{value!r} is not one of {', '.join(setting.choices)}",
               "use " + " or ".join(f'{key} = "{choice}"' for choice in setting.choices))
    return False


def _nodes(check: _Checker, table: dict[str, Any], regions: dict[str, Region],
           providers: _Providers) -> dict[str, Node]:
    nodes: dict[str, Node] = {}
    seen_serials: dict[str, str] = {}
    seen_addresses: dict[str, str] = {}
    seen_private: dict[str, str] = {}
    for name, value in table.items():
        prefix = f"nodes.{name}"
        check.name(name, prefix, "node")
        body = check.table(value, prefix)
        region = check.typed(body, "region", prefix, str, required=True)
        if region is not None and region not in regions:
            check.fail(f"{prefix}.region", f"unknown region {region!r}",
                       f"use one of: {', '.join(sorted(regions))} or add [regions.{region}]")
            region = None
        default_provider = regions[region].provider if region else None
        provider = check.typed(body, "provider", prefix, str, default=default_provider)
        driver = None
        if provider and "provider" in body:
            driver = providers.resolve(provider, f"{prefix}.provider")
        elif provider:
            driver = providers.resolve(provider, f"regions.{region}.provider")
        provider_settings = _node_keys(check, body, prefix, name, provider or "", driver)
        disks = check.typed(body, "disks", prefix, list, required=True)
        if disks is not None:
            if not 1 <= len(disks) <= 2 or not all(isinstance(d, str) and d for d in disks):
                check.fail(f"{prefix}.disks", "expected one or two disk serials",
                           'list the serials, e.g. disks = ["S4EWNX0R123456"]')
                disks = []
            elif len(set(disks)) != len(disks):
                check.fail(f"{prefix}.disks", "the same serial is listed twice",
                           "list each disk once")
                disks = list(dict.fromkeys(disks))
            for serial in disks:
                if serial in seen_serials:
                    check.fail(f"{prefix}.disks", f"serial {serial!r} is also a disk of node "
                               f"{seen_serials[serial]!r}", "a disk belongs to one node")
                seen_serials[serial] = name
        ipv4 = check.typed(body, "ipv4", prefix, str, default="")
        ipv6 = check.typed(body, "ipv6", prefix, str, default="")
        for key, address, version in (("ipv4", ipv4, 4), ("ipv6", ipv6, 6)):
            if not address or not check.address(address, f"{prefix}.{key}", version):
                continue
            if address in seen_addresses:
                check.fail(f"{prefix}.{key}", f"address {address} is also used by node "
                           f"{seen_addresses[address]!r}", "give every node its own address")
            seen_addresses[address] = name
        network = None
        if "network" in body:
            network = _network(check, check.table(body["network"], f"{prefix}.network"),
                               f"{prefix}.network")
        elif driver is not None and driver.name != "lab" and not ipv4:
            check.fail(f"{prefix}.ipv4", "missing for a provider node",
                       "add the server's public IPv4 address")
        private_address = _private_address(check, body, prefix, seen_private)
        private_interface = check.typed(body, "private_interface", prefix, str, default="eth1")
        if private_interface != "eth1" and not private_address:
            check.fail(f"{prefix}.private_interface", "set without private_address",
                       'add private_address = "10.99.0.101/24" or remove it')
        memory = check.typed(body, "memory_mb", prefix, int, default=2048)
        if memory < 1024:
            check.fail(f"{prefix}.memory_mb", f"{memory} MiB is too small",
                       "use at least 1024 (the rescue system runs from RAM)")
        size = check.typed(body, "disk_size_gb", prefix, int, default=8)
        if size < 4:
            check.fail(f"{prefix}.disk_size_gb", f"{size} GiB is too small", "use at least 4")
        labels = check.table(body.get("labels", {}), f"{prefix}.labels")
        if not all(isinstance(v, str) for v in labels.values()):
            check.fail(f"{prefix}.labels", "label values must be strings", "quote them")
        if region is None:
            continue
        nodes[name] = Node(
            name=name, region=region, provider=provider or "", disks=tuple(disks or ()),
            server_type=check.typed(body, "server_type", prefix, str, default=""),
            server_id=str(check.typed(body, "server_id", prefix, (str, int), default="")),
            memory_mb=memory, disk_size_gb=size, ipv4=ipv4, ipv6=ipv6, network=network,
            private_address=private_address, private_interface=private_interface,
            labels=dict(labels), provider_settings=provider_settings,
        )
    return nodes


def _private_address(check: _Checker, body: dict[str, Any], prefix: str,
                     seen: dict[str, str]) -> str:
    """`private_address`: an IPv4 address with its prefix length, no other node's."""
    value = check.typed(body, "private_address", prefix, str, default="")
    if not value:
        return ""
    where = f"{prefix}.private_address"
    try:
        if "/" not in value:
            raise ValueError("no prefix length")
        interface = ipaddress.IPv4Interface(value)
    except ValueError:
        check.fail(where, f"{value!r} is not an IPv4 address with its prefix length",
                   'write it as the provider\'s private network gives it, e.g. '
                   '"10.99.0.101/24"')
        return ""
    if interface.ip in (interface.network.network_address,
                        interface.network.broadcast_address) and interface.network.prefixlen < 31:
        check.fail(where, f"{value} is its network's own address, not a host's",
                   "use a host address of the network")
    address = str(interface.ip)
    if address in seen:
        check.fail(where, f"address {address} is also node {seen[address]!r}'s private address",
                   "give every node its own address")
    seen[address] = prefix.split(".", 1)[1]
    return str(value)


def _network(check: _Checker, body: dict[str, Any], prefix: str) -> StaticNetwork:
    check.known_keys(body, NETWORK_KEYS, prefix)
    address = check.typed(body, "address", prefix, str, required=True)
    check.address(address, f"{prefix}.address", 4)
    prefix_len = check.typed(body, "prefix", prefix, int, required=True)
    if prefix_len is not None and not 8 <= prefix_len <= 32:
        check.fail(f"{prefix}.prefix", f"invalid prefix length {prefix_len}",
                   "use 8-32 (Hetzner uses 32 with an off-link gateway)")
    gateway = check.typed(body, "gateway", prefix, str, required=True)
    check.address(gateway, f"{prefix}.gateway", 4)
    interface = check.typed(body, "interface", prefix, str, default="eth0")
    ipv6_address = check.typed(body, "ipv6_address", prefix, str, default="")
    if ipv6_address:
        try:
            if "/" not in ipv6_address:
                raise ValueError("no prefix length")
            ipaddress.IPv6Interface(ipv6_address)
        except ValueError:
            check.fail(f"{prefix}.ipv6_address", f"invalid IPv6 address with prefix "
                       f"{ipv6_address!r}", "write it with its prefix length, e.g. "
                       "'2a01:4f8:1:2::2/64'")
    ipv6_gateway = check.typed(body, "ipv6_gateway", prefix, str,
                               default="fe80::1" if ipv6_address else "")
    if ipv6_gateway:
        if not ipv6_address:
            check.fail(f"{prefix}.ipv6_gateway", "set without ipv6_address",
                       "add ipv6_address = \"ADDRESS/PREFIX\" or remove it")
        check.address(ipv6_gateway, f"{prefix}.ipv6_gateway", 6)
    return StaticNetwork(address=address or "", prefix=prefix_len or 32, gateway=gateway or "",
                         interface=interface, ipv6_address=ipv6_address,
                         ipv6_gateway=ipv6_gateway)


def _routed(check: _Checker, value: Any) -> tuple[RoutedName, ...]:
    if not isinstance(value, list):
        check.fail("routed", "expected an array of tables", "write [[routed]] entries")
        return ()
    names: list[RoutedName] = []
    for index, item in enumerate(value):
        prefix = f"routed[{index}]"
        body = check.table(item, prefix)
        check.known_keys(body, ROUTED_KEYS, prefix)
        name = check.typed(body, "name", prefix, str, required=True)
        if name is None:
            continue
        check.name(name, f"{prefix}.name", "routed")
        if any(existing.name == name for existing in names):
            check.fail(f"{prefix}.name", f"duplicate routed name {name!r}", "list it once")
        ttl = check.typed(body, "ttl", prefix, int, default=30)
        if not 1 <= ttl <= 86400:
            check.fail(f"{prefix}.ttl", f"invalid TTL {ttl}", "use 1-86400 seconds")
        answers = check.typed(body, "answers", prefix, int, default=1)
        if not 1 <= answers <= MAX_ANSWERS:
            check.fail(f"{prefix}.answers", f"invalid answer count {answers}",
                       f"use 1-{MAX_ANSWERS} nearest nodes per answer")
        names.append(RoutedName(name=name, ttl=ttl, answers=answers))
    return tuple(names)


def _admins(check: _Checker, value: Any) -> tuple[Admin, ...]:
    if not isinstance(value, list):
        check.fail("admins", "expected an array of tables", "write [[admins]] entries")
        return ()
    admins: list[Admin] = []
    for index, item in enumerate(value):
        prefix = f"admins[{index}]"
        body = check.table(item, prefix)
        check.known_keys(body, ADMIN_KEYS, prefix)
        name = check.typed(body, "name", prefix, str, required=True)
        if name is None:
            continue
        if not re.match(r"^[a-z_][a-z0-9_-]{0,31}$", name) or name == "root":
            check.fail(f"{prefix}.name", f"invalid user name {name!r}",
                       "use a lowercase Unix user name other than root")
        keys = check.typed(body, "keys", prefix, list, default=[])
        for key in keys:
            if not isinstance(key, str) or not key.startswith(("ssh-", "ecdsa-", "sk-")):
                check.fail(f"{prefix}.keys", f"not an SSH public key: {str(key)[:30]!r}",
                           "paste the line from the user's id_*.pub")
        admins.append(Admin(name=name, keys=tuple(keys)))
    return tuple(admins)
