"""Which state store a fleet uses, as the fleet file says: SQLite (default) or an etcd cluster.

Two spellings, never both: `[fleet] state = "etcd://10.0.0.1:2379,10.0.0.2:2379/clonefleet"`
for a plain cluster, or a `[state]` table (`backend`, `endpoints`, `prefix`, `ca_cert`,
`cert`, `key`) when the cluster needs TLS. Validation is pure: it returns every problem as
(key, problem, fix) and the inventory loader turns them into its one-line errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

BACKENDS = ("sqlite", "etcd")
STATE_KEYS = {"backend", "endpoints", "prefix", "ca_cert", "cert", "key", "timeout"}
# Requests to etcd answer in milliseconds; a member that takes this long is down or cut off.
DEFAULT_TIMEOUT = 5.0
PREFIX_RE = re.compile(r"^/?[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*/?$")
HOST_PORT_RE = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$")

Problem = tuple[str, str, str]  # (dotted key, problem, fix)


@dataclass(frozen=True)
class StateConfig:
    backend: str = "sqlite"
    endpoints: tuple[str, ...] = ()  # full URLs, e.g. "http://127.0.0.1:2379"
    prefix: str = ""  # etcd keys start with it; "/clonefleet/<fleet>/" when not given
    ca_cert: str = ""  # TLS: the cluster's CA, and this client's certificate and key
    cert: str = ""
    key: str = ""
    timeout: float = DEFAULT_TIMEOUT

    def key_prefix(self, fleet: str) -> str:
        """The prefix every key of this fleet starts with: leading and trailing '/'."""
        prefix = self.prefix or f"clonefleet/{fleet}"
        return "/" + prefix.strip("/") + "/"


SQLITE = StateConfig()


def _endpoint(value: str, scheme: str) -> str | None:
    """`host:port` or `scheme://host:port` → a full URL, or None when malformed."""
    if "://" in value:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or parts.path not in ("", "/") \
                or not HOST_PORT_RE.match(parts.netloc):
            return None
        return f"{parts.scheme}://{parts.netloc}"
    if not HOST_PORT_RE.match(value):
        return None
    return f"{scheme}://{value}"


def _port_ok(url: str) -> bool:
    return 0 < int(url.rsplit(":", 1)[1]) < 65536


def parse_state_url(url: str, key: str = "fleet.state") -> tuple[StateConfig, list[Problem]]:
    """`"sqlite"` or `"etcd://HOST:PORT[,HOST:PORT...]/PREFIX"` → the config and problems."""
    example = "'etcd://127.0.0.1:2379/clonefleet' or 'sqlite'"
    if url == "sqlite":
        return SQLITE, []
    if not url.startswith("etcd://"):
        return SQLITE, [(key, f"unknown state store {url!r}", f"use {example}")]
    rest = url[len("etcd://"):]
    hosts, _, prefix = rest.partition("/")
    endpoints = []
    for host in hosts.split(","):
        endpoint = _endpoint(host, "http")
        if endpoint is None or "://" in host or not _port_ok(endpoint):
            return SQLITE, [(key, f"bad etcd endpoint {host!r} in {url!r}",
                             f"write HOST:PORT, e.g. {example}")]
        endpoints.append(endpoint)
    problems = _prefix_problems(prefix, key) if prefix else []
    return StateConfig("etcd", tuple(endpoints), prefix), problems


def _prefix_problems(prefix: str, key: str) -> list[Problem]:
    if PREFIX_RE.match(prefix):
        return []
    return [(key, f"bad etcd key prefix {prefix!r}",
             "use letters, digits, '.', '_', '-' in '/'-separated parts, e.g. 'clonefleet/prod'")]


def parse_state_table(table: dict[str, Any]) -> tuple[StateConfig, list[Problem]]:
    """A `[state]` table → the config and every problem in it."""
    problems: list[Problem] = []
    for name in table:
        if name not in STATE_KEYS:
            problems.append((f"state.{name}", "unknown key",
                             f"remove it or use one of: {', '.join(sorted(STATE_KEYS))}"))

    def text(name: str) -> str:
        value = table.get(name, "")
        if not isinstance(value, str):
            problems.append((f"state.{name}", f"expected str, got {type(value).__name__}",
                             "write it as a quoted string"))
            return ""
        return value

    backend = text("backend") or "sqlite"
    if backend not in BACKENDS:
        problems.append(("state.backend", f"unknown backend {backend!r}",
                         f"use one of: {', '.join(BACKENDS)}"))
        return SQLITE, problems
    prefix, ca_cert, cert, key = text("prefix"), text("ca_cert"), text("cert"), text("key")
    timeout = table.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        problems.append(("state.timeout", f"expected a positive number of seconds, got "
                         f"{timeout!r}", "e.g. timeout = 5"))
        timeout = DEFAULT_TIMEOUT
    raw_endpoints = table.get("endpoints", [])
    if backend == "sqlite":
        extra = [name for name in ("endpoints", "prefix", "ca_cert", "cert", "key")
                 if name in table]
        if extra:
            problems.append((f"state.{extra[0]}", "only meaningful with backend = 'etcd'",
                             "remove it, or set backend = 'etcd'"))
        return SQLITE, problems
    if not isinstance(raw_endpoints, list) or not raw_endpoints \
            or not all(isinstance(item, str) for item in raw_endpoints):
        problems.append(("state.endpoints", "missing or not a list of strings",
                         "e.g. endpoints = ['https://10.0.0.1:2379', 'https://10.0.0.2:2379']"))
        raw_endpoints = []
    scheme = "https" if ca_cert or cert or key else "http"
    endpoints = []
    for index, item in enumerate(raw_endpoints):
        endpoint = _endpoint(item, scheme)
        if endpoint is None or not _port_ok(endpoint):
            problems.append((f"state.endpoints[{index}]", f"bad etcd endpoint {item!r}",
                             "write https://HOST:PORT (or HOST:PORT)"))
        else:
            endpoints.append(endpoint)
    if bool(cert) != bool(key):
        problems.append(("state.cert" if key else "state.key",
                         "a client certificate needs both cert and key",
                         "set both cert and key, or neither"))
    if scheme == "https" and any(url.startswith("http://") for url in endpoints):
        problems.append(("state.endpoints", "TLS files given but an endpoint is http://",
                         "use https:// endpoints with ca_cert/cert/key"))
    if prefix:
        problems += _prefix_problems(prefix, "state.prefix")
    return StateConfig("etcd", tuple(endpoints), prefix, ca_cert, cert, key,
                       float(timeout)), problems
