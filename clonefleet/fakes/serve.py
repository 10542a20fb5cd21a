"""`clonefleet lab api PROVIDER`: one provider API fake for one `[providers.NAME]` table.

The fake listens on the loopback port the table's `api_url` names (so the fleet file and the
fake agree), accepts fixed lab credentials (printed as the `export` lines a shell needs) and
knows the fleet's servers: Robot and OVH servers are seeded from the provider's nodes (Robot
number or name, OVH service name, addresses); Hetzner Cloud servers are created through the
API by the driver, and the machine room learns each one through `created(...)`.

Its servers run on lab VMs (`LabMachines`: a power-on boots the node's VM) or, with
`record=True`, on a `PrintingMachines` that only says what would happen. The CLI parses and
prints; everything else is here.
"""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
import itertools
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import Any, Protocol
from urllib.parse import urlsplit

from clonefleet.errors import ClonefleetError, ConfigError
from clonefleet.fakes.machines import LabMachines, Machines, MachineSpec, PrintingMachines
from clonefleet.inventory.model import Fleet, Node

# driver → (fake module, title, the path its api_url ends in)
FAKES: dict[str, tuple[str, str, str]] = {
    "hetzner-cloud": ("clonefleet.fakes.hcloud", "Hetzner Cloud", "/v1"),
    "hetzner-robot": ("clonefleet.fakes.robot", "Hetzner Robot", ""),
    "ovh": ("clonefleet.fakes.ovh", "OVHcloud", "/1.0"),
}

# The lab credentials each fake accepts unless told otherwise (CLI flags override them).
DEFAULT_CREDENTIALS: dict[str, dict[str, str]] = {
    "hetzner-cloud": {"token": "lab-hcloud-token"},
    "hetzner-robot": {"user": "robot", "password": "robot-secret"},
    "ovh": {"application_key": "lab-application-key",
            "application_secret": "lab-application-secret",
            "consumer_key": "lab-consumer-key"},
}

# Seconds each simulated action (Cloud), reboot (Robot) or task status (OVH) takes.
DEFAULT_DELAY = {"hetzner-cloud": 2.0, "hetzner-robot": 5.0, "ovh": 2.0}

# Robot servers the fleet names (a str robot_server) get numbers from here upward.
FIRST_NAMED_NUMBER = 100001
DEFAULT_PORT_HINT = 8089


class Fake(Protocol):
    @property
    def url(self) -> str: ...

    def start(self) -> object: ...

    def shutdown(self) -> None: ...


@dataclass(frozen=True)
class Endpoint:
    """Where the fake for `[providers.PROVIDER]` listens, from its api_url (or --port)."""

    provider: str
    driver: str
    host: str
    port: int
    api_url: str  # as the fleet file says it
    note: str = ""  # the fleet file's api_url does not lead here (--port differs)


@dataclass(frozen=True)
class Seed:
    """One server the fake knows from the start (Robot, OVH): the fake's id for it."""

    server: str  # Robot: the number; OVH: the service name
    node: str
    name: str  # Robot's server_name, OVH's service name
    ip: str
    ipv6: str = ""  # Robot: the /64 net ("2a01:4f8:1:2::"); OVH: the address
    gateway: str = ""
    mask: int = 0

    def row(self) -> dict[str, str]:
        return {"server": self.server, "name": self.name, "node": self.node, "ip": self.ip,
                "ipv6": self.ipv6}


@dataclass
class Served:
    """A built (bound, seeded, not yet serving) fake and what a user needs to reach it."""

    fake: Fake
    endpoint: Endpoint
    fleet: str
    env: dict[str, str]
    seeds: list[Seed] = field(default_factory=list)
    recording: bool = False

    @property
    def url(self) -> str:
        return self.fake.url

    @property
    def title(self) -> str:
        return FAKES[self.endpoint.driver][1]

    def exports(self) -> list[str]:
        return [f"export {name}={shlex.quote(value)}" for name, value in self.env.items()]

    def summary(self) -> dict[str, Any]:
        return {"url": self.url, "provider": self.endpoint.provider,
                "driver": self.endpoint.driver, "fleet": self.fleet, "env": dict(self.env),
                "servers": [seed.row() for seed in self.seeds],
                "machines": "record" if self.recording else "lab"}


# -- which table, which port -----------------------------------------------------------------

def provider_nodes(fleet: Fleet, provider: str) -> list[Node]:
    return [node for node in fleet.nodes.values() if node.provider == provider]


def endpoint(fleet: Fleet, provider: str, port: int | None = None) -> Endpoint:
    """The table's fake endpoint; one-line `ConfigError`s naming the table and the fix."""
    config = fleet.providers.get(provider)
    if config is None:
        served = sorted(name for name, other in fleet.providers.items()
                        if other.driver in FAKES)
        raise ConfigError(
            f"{fleet.path}: fleet {fleet.name!r} has no provider {provider!r} (with an API fake: "
            f"{', '.join(served) or 'none'}); add [providers.{provider}] with driver = "
            "\"hetzner-cloud\", \"hetzner-robot\" or \"ovh\" and api_url = "
            f"\"http://127.0.0.1:{DEFAULT_PORT_HINT}...\"")
    if config.driver not in FAKES:
        extra = " (lab VMs need no API: clonefleet lab ls)" if config.driver == "lab" else ""
        raise ConfigError(
            f"{fleet.path}: [providers.{provider}] uses driver {config.driver!r}, which has no "
            f"API fake{extra}; clonefleet lab api serves tables whose driver is "
            "hetzner-cloud, hetzner-robot or ovh")
    path = FAKES[config.driver][2]
    api_url = str(config.settings.get("api_url") or "")
    example = f"http://127.0.0.1:{port or DEFAULT_PORT_HINT}{path}"
    fix = f"set api_url = \"{example}\" in [providers.{provider}] of {fleet.path}"
    if not api_url:
        raise ConfigError(f"[providers.{provider}] has no api_url, so its driver talks to "
                          f"the real API; {fix}")
    split = urlsplit(api_url)
    host = split.hostname or ""
    if not _loopback(host):
        raise ConfigError(f"[providers.{provider}] api_url {api_url} is not a loopback address "
                          f"(the fake serves only 127.0.0.1); {fix}")
    if split.scheme != "http":
        raise ConfigError(f"[providers.{provider}] api_url {api_url}: the fake speaks plain "
                          f"http; {fix}")
    if split.path.rstrip("/") != path:
        raise ConfigError(f"[providers.{provider}] api_url {api_url}: the {config.driver} "
                          f"fake answers at {path or '/'} (e.g. {example}); {fix}")
    try:
        url_port = split.port
    except ValueError:
        url_port = None
    chosen = port if port is not None else url_port
    if chosen is None:
        raise ConfigError(f"[providers.{provider}] api_url {api_url} names no port; {fix}, or "
                          "pass --port")
    note = ""
    if url_port is not None and chosen != url_port:
        note = (f"note: [providers.{provider}] api_url says port {url_port}; set api_url = "
                f"\"http://127.0.0.1:{chosen}{path}\" for the driver to reach this fake")
    bind = "127.0.0.1" if host == "localhost" else host
    return Endpoint(provider, config.driver, bind, chosen, api_url, note)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    # The fakes listen on IPv4 only.
    return address.version == 4 and address.is_loopback


# -- seeds -------------------------------------------------------------------------------------

def _addresses(node: Node) -> tuple[str, str]:
    """The node's public IPv4 and IPv6 (bare address), as the fleet file gives them."""
    network = node.network
    ipv4 = node.ipv4 or (network.address if network else "")
    ipv6 = node.ipv6 or (str(ipaddress.ip_interface(network.ipv6_address).ip)
                         if network and network.ipv6_address else "")
    return ipv4, ipv6


def _no_address(provider: str, node: Node) -> ConfigError:
    return ConfigError(f"node {node.name} (provider {provider}) has no address for the fake to "
                       f"report; set ipv4 = \"203.0.113.X\" (or [nodes.{node.name}.network]) "
                       "in the fleet file")


def robot_seeds(fleet: Fleet, provider: str) -> list[Seed]:
    """One Robot server per node: number = robot_server (an int), or a number from 100001
    upward for a server the fleet names (then that name is its server_name)."""
    nodes = provider_nodes(fleet, provider)
    references: list[tuple[Node, int | str]] = []
    for node in nodes:
        reference = node.provider_settings.get("robot_server") or node.server_id or node.name
        if isinstance(reference, str) and reference.isdigit():
            reference = int(reference)
        references.append((node, reference))
    taken: dict[int | str, str] = {}
    for node, reference in references:
        if reference in taken:
            raise ConfigError(f"nodes {taken[reference]} and {node.name} both name Robot server "
                              f"{reference!r}; give each node its own robot_server")
        taken[reference] = node.name
    free = (number for number in itertools.count(FIRST_NAMED_NUMBER) if number not in taken)
    seeds = []
    for node, reference in references:
        ipv4, ipv6 = _addresses(node)
        if not ipv4:
            raise _no_address(provider, node)
        number = reference if isinstance(reference, int) else next(free)
        network = node.network
        own = network is not None and network.address == ipv4
        seeds.append(Seed(
            server=str(number), node=node.name,
            name=reference if isinstance(reference, str) else node.name, ip=ipv4,
            ipv6=str(ipaddress.ip_interface(f"{ipv6}/64").network.network_address)
            if ipv6 else "",
            gateway=network.gateway if own and network else "",
            mask=network.prefix if own and network else 0))
    return seeds


def ovh_seeds(fleet: Fleet, provider: str) -> list[Seed]:
    """One OVH dedicated server per node, named by service_name (else server_id, else the
    node's name)."""
    seeds: list[Seed] = []
    seen: dict[str, str] = {}
    for node in provider_nodes(fleet, provider):
        service = str(node.provider_settings.get("service_name") or node.server_id
                      or node.name)
        if service in seen:
            raise ConfigError(f"nodes {seen[service]} and {node.name} both name OVH server "
                              f"{service!r}; give each node its own service_name")
        seen[service] = node.name
        ipv4, ipv6 = _addresses(node)
        if not ipv4:
            raise _no_address(provider, node)
        seeds.append(Seed(server=service, node=node.name, name=service, ip=ipv4, ipv6=ipv6))
    return seeds


# -- building and serving ----------------------------------------------------------------------

def machines_for(fleet: Fleet, provider: str, *, record: bool,
                 out: Callable[[str], None] = print) -> Machines:
    """What the fake's servers run on: lab VMs of the fleet, or (`record`) nothing at all."""
    if record:
        return PrintingMachines(out=out)
    from clonefleet.paths import fleet_state_dir

    return LabMachines(fleet_state_dir(fleet.name),
                       nodes={node.name: node for node in provider_nodes(fleet, provider)},
                       log=out)


def credentials_for(endpoint: Endpoint, given: Mapping[str, str] | None = None
                    ) -> dict[str, str]:
    accepted = DEFAULT_CREDENTIALS[endpoint.driver]
    unknown = sorted(set(given or {}) - set(accepted))
    if unknown:
        flags = ", ".join(f"--{key.replace('_', '-')}" for key in accepted)
        raise ConfigError(f"--{unknown[0].replace('_', '-')} does not apply to "
                          f"[providers.{endpoint.provider}] ({endpoint.driver}); it takes "
                          f"{flags}")
    return {**accepted, **(given or {})}


def _env(fleet: Fleet, endpoint: Endpoint, credentials: Mapping[str, str]) -> dict[str, str]:
    settings = fleet.providers[endpoint.provider].settings
    if endpoint.driver == "hetzner-cloud":
        return {str(settings.get("token_env") or "HCLOUD_TOKEN"): credentials["token"]}
    if endpoint.driver == "hetzner-robot":
        return {str(settings.get("user_env") or "HETZNER_ROBOT_USER"): credentials["user"],
                str(settings.get("password_env") or "HETZNER_ROBOT_PASSWORD"):
                    credentials["password"]}
    return {f"OVH_{key.upper()}": value for key, value in credentials.items()}


def _make(endpoint: Endpoint, machines: Machines, credentials: Mapping[str, str],
          delay: float) -> Fake:
    module = importlib.import_module(FAKES[endpoint.driver][0])
    options: dict[str, Any]
    if endpoint.driver == "hetzner-cloud":
        options = {"tokens": (credentials["token"],), "action_seconds": delay}
    elif endpoint.driver == "hetzner-robot":
        options = {"user": credentials["user"], "password": credentials["password"],
                   "boot_delay": delay}
    else:
        options = {**credentials, "task_step": delay}
    try:
        fake: Fake = module.make_server(machines, endpoint.host, endpoint.port, **options)
    except OSError as error:
        raise ConfigError(f"cannot serve [providers.{endpoint.provider}] on "
                          f"{endpoint.host}:{endpoint.port}: {error.strerror or error}; stop "
                          "what listens there, or pass --port and set api_url to match") \
            from None
    return fake


def _close_unstarted(fake: Fake) -> None:
    """Release the port of a fake that never served (`shutdown()` would wait for it)."""
    http: Any = getattr(fake, "http", fake)
    http.server_close()


def build(fleet: Fleet, provider: str, machines: Machines, *, port: int | None = None,
          delay: float | None = None, credentials: Mapping[str, str] | None = None,
          recording: bool = False) -> Served:
    """Bind the fake for `[providers.PROVIDER]` and seed it from the fleet (not serving yet:
    `serve` runs it). A Robot or OVH server's lab VM is registered before the fake knows
    the server, so its first power-on finds it."""
    place = endpoint(fleet, provider, port)
    accepted = credentials_for(place, credentials)
    driver = place.driver
    seeds = (robot_seeds(fleet, provider) if driver == "hetzner-robot"
             else ovh_seeds(fleet, provider) if driver == "ovh" else [])
    nodes = {node.name: node for node in provider_nodes(fleet, provider)}
    fake = _make(place, machines, accepted, DEFAULT_DELAY[driver] if delay is None else delay)
    try:
        register = getattr(machines, "register", None)
        for seed in seeds:
            if register is not None:
                register(seed.server, replace(MachineSpec.for_node(nodes[seed.node]),
                                              public_ipv4=seed.ip))
            _seed(fake, driver, seed)
    except BaseException:
        _close_unstarted(fake)
        raise
    return Served(fake, place, fleet.name, _env(fleet, place, accepted), seeds, recording)


def _seed(fake: Any, driver: str, seed: Seed) -> None:
    if driver == "hetzner-robot":
        extra: dict[str, Any] = {"machine": seed.server}
        if seed.gateway:  # the node's static network: the API reports the same
            extra.update(gateway=seed.gateway, mask=seed.mask)
        fake.add_server(int(seed.server), seed.name, seed.ip, seed.ipv6, **extra)
    else:
        # Lab VMs start blank: nothing to boot until the first reboot task (into rescue).
        fake.add_server(seed.server, seed.ip, ipv6=seed.ipv6, power_on=False)


@contextlib.contextmanager
def _one_line_thread_errors(err: Callable[[str], None]) -> Iterator[None]:
    """A machine-room failure in a fake's timer thread (a lab VM that cannot boot) is one
    line, as clonefleet's errors are; anything else keeps its traceback (a bug)."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if isinstance(args.exc_value, ClonefleetError):
            err(f"error: {args.exc_value}")
        else:
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def serve(served: Served, announce: Callable[[], None] = lambda: None,
          err: Callable[[str], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop cleanly. `announce` runs once the fake
    answers and the signals are caught (a caller that waits for its output may stop it at
    once)."""
    stop = threading.Event()

    def stopping(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def to_stderr(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    previous = {number: signal.signal(number, stopping)
                for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        with _one_line_thread_errors(err or to_stderr):
            served.fake.start()
            try:
                announce()
                while not stop.wait(0.5):
                    pass
            finally:
                served.fake.shutdown()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
