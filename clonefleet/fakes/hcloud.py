"""A stateful fake of the Hetzner Cloud API v1 on loopback, for the driver and its users.

It serves the paths, payloads, status codes and error bodies the `hetzner-cloud` driver (and
the `hcloud` library) rely on: servers (create with type/image/location/SSH keys/labels, get,
list with `name`/`label_selector`/`status` filters and pagination, delete), the server actions
the driver uses (`enable_rescue`, `disable_rescue`, `reset`, `reboot`, `poweron`, `poweroff`,
`shutdown`), actions (`/actions/{id}`, `/servers/{id}/actions/{id}`), SSH keys, and the
server type / location / image catalogues creation is validated against.

Faithful where it matters to a driver:
- every request needs `Authorization: Bearer TOKEN` (401 `unauthorized` otherwise); every
  answer carries `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (3600 requests,
  one back per second) and 429 `rate_limit_exceeded` when the budget is spent;
- actions are asynchronous: `running` with growing `progress`, then `success` or `error`
  (`{"code", "message"}`); a server is `locked` while one of its actions runs, and another
  action on it answers 423 `locked`;
- server status moves `initializing` → `starting` → `running`, `stopping` → `off`,
  `deleting`; rescue, once enabled, is used by the next boot and then switches itself off
  (or after `rescue_expiry_seconds` unused, 60 minutes as on Hetzner);
- unknown server types, images, locations and SSH keys, bad names and labels are rejected
  with 400 `invalid_input` and `details.fields`, duplicates with 409 `uniqueness_error`.

When a simulated power-on, reset or power-off completes, the fake tells its `Machines`
backend (`clonefleet/fakes/machines.py`) what really happens: boot `rescue` or `disk`, or
stop. `inject(failure, times)` makes the next requests or actions fail as documented:
"locked", "resource_unavailable", "rate_limit", "server_error", "bad_gateway",
"action_error", "action_timeout".

The HTTP front only adapts: `HcloudApi.handle(method, path, query, headers, body)` holds all
the logic and returns `(status, headers, payload)`.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import re
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from clonefleet.errors import ClonefleetError
from clonefleet.fakes.machines import BootMode, Machines, PrintingMachines
from clonefleet.ssh import public_key_md5

DEFAULT_TOKEN = "lab-hcloud-token"
API_PREFIX = "/v1"

# Error code → HTTP status, as in the API reference's error table. `resource_unavailable`
# is 412 (seen in clients' fixtures for out-of-stock creates); the library itself only
# reads the code, never the status.
ERROR_STATUS: dict[str, int] = {
    "unauthorized": 401,
    "forbidden": 403,
    "token_readonly": 403,
    "resource_limit_exceeded": 403,
    "invalid_input": 400,
    "json_error": 400,
    "not_found": 404,
    "conflict": 409,
    "uniqueness_error": 409,
    "resource_unavailable": 412,
    "server_not_stopped": 412,
    "unsupported_error": 422,
    "locked": 423,
    "protected": 423,
    "rate_limit_exceeded": 429,
    "service_error": 500,
    "server_error": 500,
    "maintenance": 503,
    "unavailable": 503,
    "timeout": 504,
}

INJECTABLE = ("locked", "resource_unavailable", "rate_limit", "server_error", "bad_gateway",
              "action_error", "action_timeout")


# -- catalogues ------------------------------------------------------------------------------

def _price(location: str) -> dict[str, Any]:
    return {"location": location,
            "price_hourly": {"net": "0.0060000000", "gross": "0.0071400000000000"},
            "price_monthly": {"net": "3.7900000000", "gross": "4.5101000000000000"},
            "included_traffic": 21990232555520, "price_per_tb_traffic":
                {"net": "1.0000000000", "gross": "1.1900000000000000"}}


LOCATIONS: tuple[dict[str, Any], ...] = (
    {"id": 1, "name": "fsn1", "description": "Falkenstein DC Park 1", "country": "DE",
     "city": "Falkenstein", "latitude": 50.47612, "longitude": 12.370071,
     "network_zone": "eu-central"},
    {"id": 2, "name": "nbg1", "description": "Nuremberg DC Park 1", "country": "DE",
     "city": "Nuremberg", "latitude": 49.452102, "longitude": 11.076665,
     "network_zone": "eu-central"},
    {"id": 3, "name": "hel1", "description": "Helsinki DC Park 1", "country": "FI",
     "city": "Helsinki", "latitude": 60.169855, "longitude": 24.938379,
     "network_zone": "eu-central"},
    {"id": 4, "name": "ash", "description": "Ashburn, VA", "country": "US", "city":
     "Ashburn, VA", "latitude": 39.045821, "longitude": -77.487073,
     "network_zone": "us-east"},
    {"id": 5, "name": "hil", "description": "Hillsboro, OR", "country": "US", "city":
     "Hillsboro, OR", "latitude": 45.54222, "longitude": -122.951924,
     "network_zone": "us-west"},
    {"id": 6, "name": "sin", "description": "Singapore", "country": "SG", "city":
     "Singapore", "latitude": 1.283333, "longitude": 103.833333,
     "network_zone": "ap-southeast"},
)

EU = ("fsn1", "nbg1", "hel1")
EVERYWHERE = tuple(location["name"] for location in LOCATIONS)

# (id, name, cores, memory GB, disk GB, cpu type, architecture, where it is sold)
_TYPES: tuple[tuple[int, str, int, float, int, str, str, tuple[str, ...]], ...] = (
    (104, "cx22", 2, 4.0, 40, "shared", "x86", EU),
    (105, "cx32", 4, 8.0, 80, "shared", "x86", EU),
    (22, "cpx11", 2, 2.0, 40, "shared", "x86", EVERYWHERE),
    (23, "cpx21", 3, 4.0, 80, "shared", "x86", EVERYWHERE),
    (45, "cax11", 2, 4.0, 40, "shared", "arm", ("fsn1", "nbg1", "hel1")),
    (96, "ccx13", 2, 8.0, 80, "dedicated", "x86", EVERYWHERE),
)


def _server_type(entry: tuple[int, str, int, float, int, str, str, tuple[str, ...]]
                 ) -> dict[str, Any]:
    type_id, name, cores, memory, disk, cpu, architecture, where = entry
    return {"id": type_id, "name": name, "description": name.upper(), "cores": cores,
            "memory": memory, "disk": disk, "deprecated": False, "deprecation": None,
            "prices": [_price(location) for location in where], "storage_type": "local",
            "cpu_type": cpu, "architecture": architecture,
            "locations": [{"id": _location(location)["id"], "name": location,
                           "deprecation": None, "available": True, "recommended": True}
                          for location in where]}


def _location(name: str) -> dict[str, Any]:
    return next(location for location in LOCATIONS if location["name"] == name)


SERVER_TYPES: tuple[dict[str, Any], ...] = tuple(_server_type(entry) for entry in _TYPES)
_SOLD_IN = {entry[1]: entry[7] for entry in _TYPES}

# (id, name, os flavor, version, architecture)
_IMAGES: tuple[tuple[int, str, str, str, str], ...] = (
    (114690387, "debian-12", "debian", "12", "x86"),
    (114690389, "debian-12", "debian", "12", "arm"),
    (67794396, "debian-11", "debian", "11", "x86"),
    (161547269, "ubuntu-24.04", "ubuntu", "24.04", "x86"),
    (161547270, "ubuntu-24.04", "ubuntu", "24.04", "arm"),
    (103908070, "rocky-9", "rocky", "9", "x86"),
)

IMAGES: tuple[dict[str, Any], ...] = tuple(
    {"id": image_id, "type": "system", "status": "available", "name": name,
     "description": f"{flavor.capitalize()} {version}", "image_size": None, "disk_size": 5,
     "created": "2023-06-13T06:00:02+00:00", "created_from": None, "bound_to": None,
     "os_flavor": flavor, "os_version": version, "rapid_deploy": True,
     "protection": {"delete": False}, "deprecated": None, "deleted": None, "labels": {},
     "architecture": architecture}
    for image_id, name, flavor, version, architecture in _IMAGES)


# -- validation helpers ----------------------------------------------------------------------

HOSTNAME = re.compile(r"^(?=.{1,63}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
                      r"(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
LABEL_PREFIX = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?"
                          r"(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")


def label_key_valid(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and not LABEL_PREFIX.match(prefix):
        return False
    return bool(LABEL_NAME.match(name))


def ssh_fingerprint(public_key: str) -> str | None:
    """Hetzner's fingerprint of an OpenSSH public key: MD5 of the key blob, colon-separated."""
    if not public_key.split()[:1] or not public_key.split()[0].startswith(
            ("ssh-", "ecdsa-", "sk-")):
        return None
    return public_key_md5(public_key)


class SelectorError(ValueError):
    pass


def _split_selector(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return parts


SET_TERM = re.compile(r"^([^\s!=()]+)\s+(in|notin)\s+\(([^()]*)\)$")


Check = Callable[[dict[str, str]], bool]


def _term(key: str, operator: str, values: frozenset[str]) -> Check:
    def check(labels: dict[str, str]) -> bool:
        if operator == "exists":
            return key in labels
        if operator == "absent":
            return key not in labels
        if operator in ("=", "in"):
            return labels.get(key) in values
        return labels.get(key) not in values  # "!=", "notin"

    return check


def label_matcher(selector: str) -> Check:
    """The API's label selector: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`,
    `k notin (a,b)`; terms joined by commas all have to match."""
    checks: list[Check] = []
    for term in _split_selector(selector):
        if not term:
            raise SelectorError(f"empty term in label selector {selector!r}")
        match = SET_TERM.match(term)
        values: frozenset[str] = frozenset()
        if match:
            key, operator, values_text = match.groups()
            values = frozenset(value.strip() for value in values_text.split(","))
        elif "!=" in term:
            key, value = (part.strip() for part in term.split("!=", 1))
            operator, values = "!=", frozenset({value})
        elif "=" in term:
            key, value = (part.strip() for part in re.split("==?", term, maxsplit=1))
            operator, values = "=", frozenset({value})
        elif term.startswith("!"):
            key, operator = term[1:].strip(), "absent"
        else:
            key, operator = term, "exists"
        if not key or not label_key_valid(key):
            raise SelectorError(f"invalid label key {key!r} in label selector {selector!r}")
        checks.append(_term(key, operator, values))
    return lambda labels: all(check(labels) for check in checks)


class ApiError(Exception):
    def __init__(self, code: str, message: str, details: Any = None,
                 status: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details
        self.status = status or ERROR_STATUS.get(code, 400)
        self.headers = headers or {}


def invalid_field(field_name: str, message: str) -> ApiError:
    return ApiError("invalid_input", f"invalid input in field '{field_name}'",
                    {"fields": [{"name": field_name, "messages": [message]}]})


def _now_iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")


# -- state -----------------------------------------------------------------------------------

@dataclass
class Action:
    id: int
    command: str
    server_id: int | None
    started: float
    due: float  # when it finishes; inf for an action that never does
    fail: bool = False
    status: str = "running"
    finished: float | None = None
    progress_at_end: int = 100
    on_success: Callable[[], list[Callable[[], None]]] | None = None
    on_error: Callable[[], None] | None = None

    def payload(self, now: float) -> dict[str, Any]:
        if self.status == "running":
            span = self.due - self.started
            done = 1.0 if span <= 0 else (now - self.started) / span
            progress = 0 if span == float("inf") else max(0, min(99, int(done * 100)))
        else:
            progress = self.progress_at_end
        return {"id": self.id, "command": self.command, "status": self.status,
                "progress": progress, "started": _now_iso(self.started),
                "finished": _now_iso(self.finished) if self.finished is not None else None,
                "resources": ([{"id": self.server_id, "type": "server"}]
                              if self.server_id is not None else []),
                "error": ({"code": "action_failed", "message": "Action failed"}
                          if self.status == "error" else None)}


@dataclass
class Server:
    id: int
    name: str
    server_type: dict[str, Any]
    image: dict[str, Any]
    location: dict[str, Any]
    labels: dict[str, str]
    created: float
    ssh_keys: list[int]
    status: str = "initializing"
    rescue_enabled: bool = False
    rescue_keys: list[str] = field(default_factory=list)
    rescue_enabled_at: float = 0.0

    @property
    def ipv4(self) -> str:
        return f"203.0.113.{self.id % 250 + 1}"

    def payload(self, locked: bool) -> dict[str, Any]:
        ipv4 = self.ipv4
        ipv6 = f"2001:db8:{self.id:x}::/64"
        datacenter = {"id": self.location["id"], "name": f"{self.location['name']}-dc14",
                      "description": f"{self.location['description']} DC14",
                      "location": self.location,
                      "server_types": {"supported": [t["id"] for t in SERVER_TYPES],
                                       "available": [t["id"] for t in SERVER_TYPES],
                                       "available_for_migration": []}}
        return {
            "id": self.id, "name": self.name, "status": self.status,
            "created": _now_iso(self.created),
            "public_net": {
                "ipv4": {"id": 10_000 + self.id, "ip": ipv4, "blocked": False,
                         "dns_ptr": f"static.{ipv4}.clients.your-server.de"},
                "ipv6": {"id": 20_000 + self.id, "ip": ipv6, "blocked": False,
                         "dns_ptr": []},
                "floating_ips": [], "firewalls": []},
            "private_net": [],
            "server_type": self.server_type,
            # `datacenter` is deprecated; hcloud 2.27 reads only `location`.
            "datacenter": datacenter,
            "location": self.location,
            "image": self.image, "iso": None,
            "rescue_enabled": self.rescue_enabled, "locked": locked,
            "backup_window": None, "outgoing_traffic": 0, "ingoing_traffic": 0,
            "included_traffic": 21990232555520,
            "primary_disk_size": self.server_type["disk"],
            "protection": {"delete": False, "rebuild": False},
            "labels": dict(self.labels), "volumes": [], "load_balancers": [],
            "placement_group": None,
        }


@dataclass
class SshKey:
    id: int
    name: str
    public_key: str
    fingerprint: str
    labels: dict[str, str]
    created: float

    def payload(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "fingerprint": self.fingerprint,
                "public_key": self.public_key, "labels": dict(self.labels),
                "created": _now_iso(self.created)}


@dataclass
class Injection:
    failure: str
    times: int
    command: str | None = None


Response = tuple[int, dict[str, str], dict[str, Any] | None]


class HcloudApi:
    """The fake's state and rules; no HTTP in here."""

    def __init__(self, machines: Machines, *, tokens: Sequence[str] = (DEFAULT_TOKEN,),
                 action_seconds: float = 2.0, rescue_expiry_seconds: float = 3600.0,
                 rate_limit: int = 3600, rate_refill_per_second: float = 1.0,
                 clock: Callable[[], float] = time.time,
                 log: Callable[[str], None] | None = None) -> None:
        self.machines = machines
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.tokens = set(tokens)
        self.action_seconds = action_seconds
        self.rescue_expiry_seconds = rescue_expiry_seconds
        self.rate_limit = rate_limit
        self.rate_refill = rate_refill_per_second
        self.clock = clock
        self.lock = threading.RLock()
        self.advancing = threading.Lock()
        self.servers: dict[int, Server] = {}
        self.actions: dict[int, Action] = {}
        self.ssh_keys: dict[int, SshKey] = {}
        self.injections: list[Injection] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) seen, for tests
        self._ids = itertools.count(1001)
        self._action_ids = itertools.count(5001)
        self._budget = float(rate_limit)
        self._budget_at = clock()

    # -- injections ----------------------------------------------------------------------

    def inject(self, failure: str, times: int = 1, command: str | None = None) -> None:
        if failure not in INJECTABLE:
            raise ValueError(f"unknown failure {failure!r}; use one of {', '.join(INJECTABLE)}")
        with self.lock:
            self.injections.append(Injection(failure, times, command))

    def _take(self, failure: str, command: str | None = None) -> bool:
        for injection in self.injections:
            if injection.failure != failure or injection.times <= 0:
                continue
            if injection.command is not None and injection.command != command:
                continue
            injection.times -= 1
            return True
        return False

    # -- time ----------------------------------------------------------------------------

    def advance(self, blocking: bool = True) -> None:
        """Finish every action whose time has come, in order, and tell the machine room.

        Machine calls (a lab VM boot) may take seconds: they run outside the state lock,
        so the API keeps answering (the action stays `running` until its machine call is
        done); `advancing` keeps the calls in order."""
        if not self.advancing.acquire(blocking=blocking):
            return
        try:
            while True:
                with self.lock:
                    now = self.clock()
                    for server in self.servers.values():
                        if (server.rescue_enabled and now - server.rescue_enabled_at
                                >= self.rescue_expiry_seconds):
                            server.rescue_enabled = False
                    due = sorted((action for action in self.actions.values()
                                  if action.status == "running" and action.due <= now),
                                 key=lambda action: (action.due, action.id))
                    if not due:
                        return
                    action = due[0]
                    effects: list[Callable[[], None]] = []
                    if action.fail:
                        if action.on_error is not None:
                            action.on_error()
                    elif action.on_success is not None:
                        effects = action.on_success()
                broken = False
                for effect in effects:
                    try:
                        effect()
                    except ClonefleetError as error:
                        # The machine room could not do it (no lab VM, qemu failed): the
                        # action fails as a real one would, and the fake keeps serving.
                        broken = True
                        self.log(f"action {action.id} ({action.command}) failed: {error}")
                with self.lock:
                    action.status = "error" if action.fail or broken else "success"
                    action.finished = self.clock()
        finally:
            self.advancing.release()

    def _new_action(self, command: str, server: Server | None, *, after: float | None = None,
                    on_success: Callable[[], list[Callable[[], None]]] | None = None,
                    on_error: Callable[[], None] | None = None) -> Action:
        now = self.clock()
        start = max(now, after if after is not None else now)
        fail = self._take("action_error", command)
        hang = not fail and self._take("action_timeout", command)
        action = Action(id=next(self._action_ids), command=command,
                        server_id=server.id if server else None, started=now,
                        due=float("inf") if hang else start + self.action_seconds,
                        fail=fail, on_success=on_success, on_error=on_error,
                        progress_at_end=100)
        self.actions[action.id] = action
        return action

    def _locked(self, server: Server) -> bool:
        return any(action.status == "running" and action.server_id == server.id
                   for action in self.actions.values())

    # -- the HTTP-free entry point -------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]],
               headers: dict[str, str], body: bytes) -> Response:
        self.advance(blocking=False)
        with self.lock:
            self.requests.append((method, path))
            extra = {"X-Correlation-Id": uuid.uuid4().hex[:16]}
            try:
                if not path.startswith(API_PREFIX + "/") and path != API_PREFIX:
                    raise ApiError("not_found", f"no such endpoint {path}")
                self._authenticate(headers)
                extra.update(self._rate_limit())
                if self._take("server_error"):
                    raise ApiError("service_error", "internal error, please try again later")
                if self._take("bad_gateway"):
                    # A proxy in front of the API answers, not the API: no JSON error body.
                    return 502, extra, None
                status, payload = self._route(method, path[len(API_PREFIX):], query, body)
                return status, extra, payload
            except ApiError as error:
                extra.update(error.headers)
                return error.status, extra, {"error": {"code": error.code,
                                                       "message": error.message,
                                                       "details": error.details}}

    def _authenticate(self, headers: dict[str, str]) -> None:
        authorization = headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in self.tokens:
            raise ApiError("unauthorized", "unable to authenticate")

    def _rate_limit(self) -> dict[str, str]:
        now = self.clock()
        self._budget = min(self.rate_limit,
                           self._budget + (now - self._budget_at) * self.rate_refill)
        self._budget_at = now
        forced = self._take("rate_limit")
        if forced or self._budget < 1:
            # An injected 429 reports a spent budget without spending it.
            headers = self._rate_headers(now)
            if forced:
                headers["RateLimit-Remaining"] = "0"
            raise ApiError("rate_limit_exceeded", "limit of 3600 requests per hour reached",
                           headers=headers)
        self._budget -= 1
        return self._rate_headers(now)

    def _rate_headers(self, now: float) -> dict[str, str]:
        missing = self.rate_limit - self._budget
        reset = int(now + (missing / self.rate_refill if self.rate_refill else 3600))
        return {"RateLimit-Limit": str(self.rate_limit),
                "RateLimit-Remaining": str(max(0, int(self._budget))),
                "RateLimit-Reset": str(reset)}

    # -- routing -------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict[str, list[str]],
               body: bytes) -> tuple[int, dict[str, Any] | None]:
        parts = [part for part in path.split("/") if part]
        match (method, parts):
            case ("GET", ["servers"]):
                return 200, self._list_servers(query)
            case ("POST", ["servers"]):
                return 201, self._create_server(self._json(body))
            case ("GET", ["servers", server_id]):
                return 200, {"server": self._server_payload(self._server(server_id))}
            case ("DELETE", ["servers", server_id]):
                return 200, {"action": self._delete_server(self._server(server_id))}
            case ("GET", ["servers", server_id, "actions", action_id]):
                action = self._action(action_id)
                if action.server_id != self._server(server_id).id:
                    raise ApiError("not_found", f"action with ID '{action_id}' not found")
                return 200, {"action": action.payload(self.clock())}
            case ("POST", ["servers", server_id, "actions", command]):
                return 201, self._server_action(self._server(server_id), command,
                                                self._json(body, optional=True))
            case ("GET", ["actions", action_id]):
                return 200, {"action": self._action(action_id).payload(self.clock())}
            case ("GET", ["ssh_keys"]):
                return 200, self._list_ssh_keys(query)
            case ("POST", ["ssh_keys"]):
                return 201, {"ssh_key": self._create_ssh_key(self._json(body)).payload()}
            case ("GET", ["ssh_keys", key_id]):
                return 200, {"ssh_key": self._ssh_key(key_id).payload()}
            case ("DELETE", ["ssh_keys", key_id]):
                del self.ssh_keys[self._ssh_key(key_id).id]
                return 204, None
            case ("GET", ["server_types"]):
                return 200, self._catalogue("server_types", SERVER_TYPES, query)
            case ("GET", ["locations"]):
                return 200, self._catalogue("locations", LOCATIONS, query)
            case ("GET", ["images"]):
                images = [image for image in IMAGES
                          if not query.get("architecture")
                          or image["architecture"] in query["architecture"]]
                return 200, self._catalogue("images", images, query)
        raise ApiError("not_found", f"no {method} endpoint {API_PREFIX}{path}")

    @staticmethod
    def _json(body: bytes, optional: bool = False) -> dict[str, Any]:
        if not body.strip():
            if optional:
                return {}
            raise ApiError("json_error", "request body is empty; expected a JSON object")
        try:
            data = json.loads(body)
        except ValueError as error:
            raise ApiError("json_error", f"invalid JSON: {error}") from None
        if not isinstance(data, dict):
            raise ApiError("json_error", "expected a JSON object")
        return data

    @staticmethod
    def _id(text: str, what: str) -> int:
        if not text.isdigit():
            raise ApiError("invalid_input", f"invalid {what} ID '{text}'")
        return int(text)

    def _server(self, text: str) -> Server:
        server = self.servers.get(self._id(text, "server"))
        if server is None:
            raise ApiError("not_found", f"server with ID '{text}' not found")
        return server

    def _action(self, text: str) -> Action:
        action = self.actions.get(self._id(text, "action"))
        if action is None:
            raise ApiError("not_found", f"action with ID '{text}' not found")
        return action

    def _ssh_key(self, text: str) -> SshKey:
        key = self.ssh_keys.get(self._id(text, "SSH key"))
        if key is None:
            raise ApiError("not_found", f"SSH key with ID '{text}' not found")
        return key

    def _server_payload(self, server: Server) -> dict[str, Any]:
        return server.payload(self._locked(server))

    # -- lists and pagination ------------------------------------------------------------

    @staticmethod
    def _single(query: dict[str, list[str]], key: str) -> str | None:
        values = query.get(key)
        return values[-1] if values else None

    def _page(self, key: str, items: Sequence[dict[str, Any]],
              query: dict[str, list[str]]) -> dict[str, Any]:
        page = self._number(query, "page", 1)
        per_page = min(50, self._number(query, "per_page", 25))
        total = len(items)
        last_page = max(1, -(-total // per_page))
        start = (page - 1) * per_page
        return {key: list(items[start:start + per_page]),
                "meta": {"pagination": {
                    "page": page, "per_page": per_page,
                    "previous_page": page - 1 if page > 1 else None,
                    "next_page": page + 1 if page < last_page else None,
                    "last_page": last_page, "total_entries": total}}}

    def _number(self, query: dict[str, list[str]], key: str, default: int) -> int:
        text = self._single(query, key)
        if text is None:
            return default
        if not text.isdigit() or int(text) < 1:
            raise invalid_field(key, f"{key} must be a positive integer")
        return int(text)

    def _selected(self, query: dict[str, list[str]]) -> Callable[[dict[str, str]], bool]:
        selector = self._single(query, "label_selector")
        if selector is None:
            return lambda labels: True
        try:
            return label_matcher(selector)
        except SelectorError as error:
            raise invalid_field("label_selector", str(error)) from None

    def _list_servers(self, query: dict[str, list[str]]) -> dict[str, Any]:
        matches = self._selected(query)
        name = self._single(query, "name")
        statuses = set(query.get("status", []))
        servers = [self._server_payload(server)
                   for server in sorted(self.servers.values(), key=lambda s: s.id)
                   if (name is None or server.name == name)
                   and (not statuses or server.status in statuses)
                   and matches(server.labels)]
        return self._page("servers", servers, query)

    def _list_ssh_keys(self, query: dict[str, list[str]]) -> dict[str, Any]:
        matches = self._selected(query)
        name = self._single(query, "name")
        fingerprint = self._single(query, "fingerprint")
        keys = [key.payload() for key in sorted(self.ssh_keys.values(), key=lambda k: k.id)
                if (name is None or key.name == name)
                and (fingerprint is None or key.fingerprint == fingerprint)
                and matches(key.labels)]
        return self._page("ssh_keys", keys, query)

    def _catalogue(self, key: str, items: Sequence[dict[str, Any]],
                   query: dict[str, list[str]]) -> dict[str, Any]:
        name = self._single(query, "name")
        return self._page(key, [item for item in items if name is None or item["name"] == name],
                          query)

    # -- SSH keys ------------------------------------------------------------------------

    def _labels(self, value: Any) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise invalid_field("labels", "labels must be an object")
        for key, label in value.items():
            if not isinstance(label, str) or not label_key_valid(key) \
                    or not LABEL_VALUE.match(label):
                raise invalid_field("labels", f"label {key!r}={label!r} is invalid")
        return dict(value)

    def _create_ssh_key(self, data: dict[str, Any]) -> SshKey:
        name, public_key = data.get("name"), data.get("public_key")
        if not isinstance(name, str) or not name:
            raise invalid_field("name", "name is required")
        if not isinstance(public_key, str) or not public_key:
            raise invalid_field("public_key", "public_key is required")
        fingerprint = ssh_fingerprint(public_key)
        if fingerprint is None:
            raise invalid_field("public_key", "invalid public key")
        labels = self._labels(data.get("labels"))
        if any(key.name == name for key in self.ssh_keys.values()):
            raise ApiError("uniqueness_error", "SSH key with the same name already exists",
                           {"fields": [{"name": "name"}]})
        if any(key.fingerprint == fingerprint for key in self.ssh_keys.values()):
            raise ApiError("uniqueness_error",
                           "SSH key with the same fingerprint already exists",
                           {"fields": [{"name": "public_key"}]})
        key = SshKey(next(self._ids), name, public_key.strip(), fingerprint, labels,
                     self.clock())
        self.ssh_keys[key.id] = key
        return key

    def _key_reference(self, value: Any, field_name: str, by_name: bool) -> SshKey:
        for key in self.ssh_keys.values():
            if (isinstance(value, int) and not isinstance(value, bool) and key.id == value) \
                    or (by_name and isinstance(value, str) and key.name == value):
                return key
        raise invalid_field(field_name, f"SSH key {value!r} not found")

    # -- servers -------------------------------------------------------------------------

    def _create_server(self, data: dict[str, Any]) -> dict[str, Any]:
        name = data.get("name")
        if not isinstance(name, str) or not HOSTNAME.match(name):
            raise invalid_field("name", "name must be a valid hostname (RFC 1123)")
        server_type = self._named("server_type", data.get("server_type"), SERVER_TYPES)
        location_value = data.get("location")
        location = (self._named("location", location_value, LOCATIONS)
                    if location_value is not None else LOCATIONS[0])
        image = self._image(data.get("image"), server_type["architecture"])
        ssh_keys = data.get("ssh_keys") or []
        if not isinstance(ssh_keys, list):
            raise invalid_field("ssh_keys", "ssh_keys must be an array")
        keys = [self._key_reference(value, "ssh_keys", by_name=True) for value in ssh_keys]
        labels = self._labels(data.get("labels"))
        start = data.get("start_after_create", True)
        if not isinstance(start, bool):
            raise invalid_field("start_after_create", "must be a boolean")
        if any(server.name == name for server in self.servers.values()):
            raise ApiError("uniqueness_error", "server name is already used",
                           {"fields": [{"name": "name"}]})
        if location["name"] not in _SOLD_IN[server_type["name"]]:
            raise ApiError("resource_unavailable",
                           f"server type {server_type['name']} is unavailable in "
                           f"{location['name']}")
        if self._take("resource_unavailable", "create_server"):
            raise ApiError("resource_unavailable",
                           "the requested resource is currently unavailable")
        server = Server(id=next(self._ids), name=name, server_type=server_type, image=image,
                        location=location, labels=labels, created=self.clock(),
                        ssh_keys=[key.id for key in keys])
        self.servers[server.id] = server

        def created() -> list[Callable[[], None]]:
            server.status = "starting" if start else "off"
            # A machine room that builds machines on demand (LabMachines) learns the new
            # server here, before anything powers it on.
            hook = getattr(self.machines, "created", None)
            if hook is None:
                return []
            server_id, address = str(server.id), server.ipv4
            return [lambda: hook(server_id, name, address)]

        follow_ups: list[Action] = []

        def failed() -> None:
            server.status = "off"
            for action in follow_ups:  # nothing starts a server that was not created
                action.fail = True

        create = self._new_action("create_server", server, on_success=created, on_error=failed)
        next_actions = []
        if start:
            # It starts when creation is done and takes its own time after that.
            boot = self._new_action("start_server", server, after=create.due,
                                    on_success=lambda: self._booted(server),
                                    on_error=failed)
            follow_ups.append(boot)
            next_actions.append(boot.payload(self.clock()))
        return {"server": self._server_payload(server),
                "action": create.payload(self.clock()), "next_actions": next_actions,
                "root_password": None if keys else secrets.token_urlsafe(15)}

    def _named(self, field_name: str, value: Any, items: Sequence[dict[str, Any]]
               ) -> dict[str, Any]:
        for item in items:
            if value in (item["id"], item["name"]) and not isinstance(value, bool):
                return item
        raise invalid_field(field_name, f"{field_name.replace('_', ' ')} {value!r} not found")

    @staticmethod
    def _image(value: Any, architecture: str) -> dict[str, Any]:
        for image in IMAGES:
            if isinstance(value, int) and not isinstance(value, bool) and image["id"] == value:
                if image["architecture"] != architecture:
                    raise invalid_field("image", f"image {value} is not available for "
                                                 f"{architecture} server types")
                return image
            if isinstance(value, str) and image["name"] == value \
                    and image["architecture"] == architecture:
                return image
        raise invalid_field("image", f"image {value!r} not found")

    def _booted(self, server: Server) -> list[Callable[[], None]]:
        """A (re)boot has happened: into rescue once if it is enabled, else from disk."""
        server.status = "running"
        mode: BootMode = "rescue" if server.rescue_enabled else "disk"
        keys = list(server.rescue_keys) if mode == "rescue" else []
        if mode == "rescue":
            # Rescue is used by the first boot into it, then off again (as on Hetzner).
            server.rescue_enabled = False
        machines, server_id = self.machines, str(server.id)
        return [lambda: machines.power_on(server_id, mode, keys)]

    def _stopped(self, server: Server) -> list[Callable[[], None]]:
        server.status = "off"
        machines, server_id = self.machines, str(server.id)
        return [lambda: machines.power_off(server_id)]

    def _delete_server(self, server: Server) -> dict[str, Any]:
        if self._take("locked", "delete_server") or self._locked(server):
            raise ApiError("locked", f"server {server.id} is locked")
        previous = server.status
        server.status = "deleting"

        def deleted() -> list[Callable[[], None]]:
            self.servers.pop(server.id, None)
            machines, server_id = self.machines, str(server.id)
            # A machine room that builds machines (LabMachines) removes the VM and its disks.
            delete = getattr(machines, "delete", None)
            if delete is not None:
                return [lambda: delete(server_id)]
            return [lambda: machines.power_off(server_id)]

        def failed() -> None:
            server.status = previous

        return self._new_action("delete_server", server, on_success=deleted,
                                on_error=failed).payload(self.clock())

    def _server_action(self, server: Server, command: str,
                       data: dict[str, Any]) -> dict[str, Any]:
        handlers = {"enable_rescue": self._enable_rescue, "disable_rescue":
                    self._disable_rescue, "reset": self._reset, "reboot": self._reset,
                    "poweron": self._poweron, "poweroff": self._poweroff,
                    "shutdown": self._poweroff}
        handler = handlers.get(command)
        if handler is None:
            raise ApiError("not_found", f"no action {command!r} for servers")
        full_command = {"reset": "reset_server", "reboot": "reboot_server",
                        "poweron": "start_server", "poweroff": "stop_server",
                        "shutdown": "shutdown_server"}.get(command, command)
        if self._take("locked", full_command) or self._locked(server):
            raise ApiError("locked", f"server {server.id} is locked: another action is "
                                     "running")
        if self._take("resource_unavailable", full_command):
            raise ApiError("resource_unavailable",
                           "the requested resource is currently unavailable")
        if server.status in ("initializing", "deleting"):
            raise ApiError("locked", f"server {server.id} is {server.status}")
        return handler(server, full_command, data)

    def _enable_rescue(self, server: Server, command: str,
                       data: dict[str, Any]) -> dict[str, Any]:
        rescue_type = data.get("type")
        if rescue_type not in (None, "linux64"):
            raise invalid_field("type", f"rescue type {rescue_type!r} is not supported")
        values = data.get("ssh_keys") or []
        if not isinstance(values, list):
            raise invalid_field("ssh_keys", "ssh_keys must be an array of SSH key IDs")
        keys = [self._key_reference(value, "ssh_keys", by_name=False) for value in values]

        def enabled() -> list[Callable[[], None]]:
            server.rescue_enabled = True
            server.rescue_enabled_at = self.clock()
            server.rescue_keys = [key.public_key for key in keys]
            return []

        action = self._new_action(command, server, on_success=enabled)
        return {"action": action.payload(self.clock()),
                "root_password": secrets.token_urlsafe(15)}

    def _disable_rescue(self, server: Server, command: str,
                        data: dict[str, Any]) -> dict[str, Any]:
        def disabled() -> list[Callable[[], None]]:
            server.rescue_enabled = False
            server.rescue_keys = []
            return []

        return {"action": self._new_action(command, server,
                                           on_success=disabled).payload(self.clock())}

    def _power_action(self, server: Server, command: str, moving: str | None,
                      done: Callable[[], list[Callable[[], None]]]) -> dict[str, Any]:
        """An action that puts the server in `moving` (if not None) until it completes with
        `done`; a failed action puts the server back where it was."""
        previous = server.status
        if moving is not None:
            server.status = moving

        def failed() -> None:
            server.status = previous

        return {"action": self._new_action(command, server, on_success=done,
                                           on_error=failed).payload(self.clock())}

    def _reset(self, server: Server, command: str, data: dict[str, Any]) -> dict[str, Any]:
        # A reset of a server that is off starts it, as a power cycle would.
        return self._power_action(server, command,
                                  "starting" if server.status == "off" else None,
                                  lambda: self._booted(server))

    def _poweron(self, server: Server, command: str, data: dict[str, Any]) -> dict[str, Any]:
        if server.status == "running":
            return {"action": self._new_action(command, server,
                                               on_success=list).payload(self.clock())}
        return self._power_action(server, command, "starting", lambda: self._booted(server))

    def _poweroff(self, server: Server, command: str, data: dict[str, Any]) -> dict[str, Any]:
        return self._power_action(server, command,
                                  "stopping" if server.status != "off" else None,
                                  lambda: self._stopped(server))


# -- HTTP front ------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, a keep-alive client (requests'
    # Session, as hcloud uses) waits ~40 ms for the delayed ACK on every request.
    disable_nagle_algorithm = True

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {key.lower(): value for key, value in self.headers.items()}
        status, extra, payload = self.server.api.handle(
            self.command, parts.path.rstrip("/") or "/", parse_qs(parts.query), headers, body)
        data = b"" if payload is None else json.dumps(payload).encode()
        if status == 502 and payload is None:
            data = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        self.send_response(status)
        content_type = "text/html" if status == 502 and payload is None else "application/json"
        if data:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        if data:
            self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log_requests:
            super().log_message(format, *args)


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], api: HcloudApi, log_requests: bool) -> None:
        super().__init__(address, _Handler)
        self.api = api
        self.log_requests = log_requests


class HcloudFake:
    """The fake API behind an HTTP server on loopback; `url` is what `api_url` takes."""

    def __init__(self, api: HcloudApi, host: str, port: int, tick: float,
                 log_requests: bool = False) -> None:
        self.api = api
        self.http = _HttpServer((host, port), api, log_requests)
        self.url = f"http://{host}:{self.http.server_address[1]}{API_PREFIX}"
        self.tick = tick
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def machines(self) -> Machines:
        return self.api.machines

    def inject(self, failure: str, times: int = 1, command: str | None = None) -> None:
        """Make the next `times` requests (or actions) fail with `failure` (see INJECTABLE);
        `command` limits it to one action command (e.g. "reset_server")."""
        self.api.inject(failure, times, command)

    def _ticker(self) -> None:
        while not self._stop.wait(self.tick):
            self.api.advance()

    def _start_ticker(self) -> None:
        thread = threading.Thread(target=self._ticker, name="hcloud-fake-ticker", daemon=True)
        thread.start()
        self._threads.append(thread)

    def start(self) -> HcloudFake:
        self._start_ticker()
        # A short poll keeps shutdown() quick (tests start and stop many fakes).
        thread = threading.Thread(target=self.http.serve_forever, args=(0.05,),
                                  name="hcloud-fake", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def serve_forever(self) -> None:
        self._start_ticker()
        try:
            self.http.serve_forever()
        finally:
            self._stop.set()

    def shutdown(self) -> None:
        self._stop.set()
        self.http.shutdown()
        self.http.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> HcloudFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def make_server(machines: Machines, host: str = "127.0.0.1", port: int = 0,
                **options: Any) -> HcloudFake:
    """Build (not start) the fake. Options: `tokens` (accepted Bearer tokens),
    `action_seconds` (how long each action runs, 2 s; tiny in tests), `rescue_expiry_seconds`,
    `rate_limit`, `rate_refill_per_second`, `tick` (how often running actions are advanced),
    `log_requests`, `clock`."""
    tick = float(options.pop("tick", min(0.2, max(0.005, options.get("action_seconds", 2.0)
                                                  / 5))))
    log_requests = bool(options.pop("log_requests", False))
    return HcloudFake(HcloudApi(machines, **options), host, port, tick, log_requests)


def run(machines: Machines, argv: Sequence[str] | None = None,
        out: Callable[[str], None] = print) -> int:
    """`python -m clonefleet.fakes.hcloud`: serve until interrupted (`clonefleet lab api
    PROVIDER` builds the fake from the fleet file instead)."""
    parser = argparse.ArgumentParser(prog="hcloud-fake",
                                     description="local fake of the Hetzner Cloud API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", action="append", help=f"accepted token ({DEFAULT_TOKEN})")
    parser.add_argument("--action-seconds", type=float, default=2.0)
    parser.add_argument("--log-requests", action="store_true")
    args = parser.parse_args(argv)
    fake = make_server(machines, args.host, args.port,
                       tokens=tuple(args.token or [DEFAULT_TOKEN]),
                       action_seconds=args.action_seconds, log_requests=args.log_requests)
    out(f"Hetzner Cloud API fake at {fake.url} (token: {', '.join(sorted(fake.api.tokens))})")
    with contextlib.suppress(KeyboardInterrupt):
        fake.serve_forever()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(PrintingMachines(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
