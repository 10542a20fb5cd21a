"""A stateful fake of the Hetzner Robot webservice (dedicated servers) on loopback.

Same paths, form-encoded inputs, JSON answers, status codes and error bodies as
https://robot.hetzner.com/doc/webservice/en.html and community.hrobot's test fixtures:
`GET /server`, `GET /server/{n}`, `GET /ip/{ip}`, `GET|POST /key`, `GET /key/{fingerprint}`,
`GET /boot/{n}`, `GET|POST|DELETE /boot/{n}/rescue`, `GET /boot/{n}/rescue/last`,
`GET /reset`, `GET|POST /reset/{n}`. HTTP Basic auth on every call.

Servers are seeded (`add_server`), never created through the API: Robot servers are ordered
and cancelled by people. As in Robot, an activated rescue system applies at the next reset
and is consumed by that boot (the activation then reads inactive, and `/rescue/last` keeps
it with its `boot_time` and the rescue's host key fingerprints). A reset answers at once and
the machine reboots `boot_delay` seconds later on the `Machines` backend: into "rescue" with
the authorized keys when a rescue activation is armed, otherwise from "disk".

Failures are injected with `inject(name, times)`: "rate_limit" (403 RATE_LIMIT_EXCEEDED),
"server_error" (500 INTERNAL_ERROR), "reset_failed" (500 RESET_FAILED on POST /reset),
"boot_activation_failed" / "boot_deactivation_failed" (500 on POST / DELETE rescue),
"in_process" (the next requests see every server "in process"), "no_boot" (the next resets
are accepted but the machine never comes back).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ipaddress
import json
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from clonefleet.fakes.machines import BootMode, Machines, RecordingMachines
from clonefleet.ssh import public_key_md5

RESET_TYPES = ("sw", "hw", "power", "power_long", "man")
RESCUE_OS = ("linux", "vkvm")
FAILURES = ("rate_limit", "server_error", "reset_failed", "boot_activation_failed",
            "boot_deactivation_failed", "in_process", "no_boot")

Answer = tuple[int, Any]


def _error(status: int, code: str, message: str, **extra: Any) -> Answer:
    return status, {"error": {"status": status, "code": code, "message": message, **extra}}


def _invalid(invalid: Sequence[str] = (), missing: Sequence[str] = ()) -> Answer:
    return _error(400, "INVALID_INPUT", "invalid input", invalid=list(invalid) or None,
                  missing=list(missing) or None)


def _md5_fingerprint(blob: bytes) -> str:
    fingerprint = public_key_md5(f"key {base64.b64encode(blob).decode()}")
    assert fingerprint is not None  # any blob re-encodes
    return fingerprint


@dataclass
class FakeKey:
    name: str
    fingerprint: str
    type: str
    size: int
    data: str
    created_at: str

    def body(self) -> dict[str, Any]:
        return {"name": self.name, "fingerprint": self.fingerprint, "type": self.type,
                "size": self.size, "data": self.data, "created_at": self.created_at}


@dataclass
class FakeServer:
    number: int
    name: str
    ip: str
    ipv6_net: str
    product: str = "AX41-NVMe"
    dc: str = "FSN1-DC14"
    status: str = "ready"
    gateway: str = ""
    mask: int = 26
    machine: str = ""  # the Machines backend's name for it (default: the number)
    reset_types: tuple[str, ...] = ("sw", "hw", "man")
    rescue_host_keys: tuple[str, ...] = ()
    rescue: dict[str, Any] | None = None  # the armed activation, if any
    last_rescue: dict[str, Any] | None = None
    boots: int = 0

    def summary(self) -> dict[str, Any]:
        return {"server_ip": self.ip, "server_ipv6_net": self.ipv6_net,
                "server_number": self.number, "server_name": self.name,
                "product": self.product, "dc": self.dc, "traffic": "unlimited",
                "status": self.status, "cancelled": False, "paid_until": "2030-12-31"}


class RobotApi:
    """The webservice's logic without HTTP: `handle(...) -> (status, body)`."""

    def __init__(self, machines: Machines, *, user: str = "robot",
                 password: str = "robot-secret", boot_delay: float = 0.05,
                 max_request: int = 200, interval: int = 3600,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.machines = machines
        self.user, self.password = user, password
        self.boot_delay = boot_delay
        self.max_request, self.interval = max_request, interval
        self.clock = clock
        self.servers: dict[int, FakeServer] = {}
        self.keys: dict[str, FakeKey] = {}
        self.failures: dict[str, int] = {}
        self.requests: list[tuple[str, str, list[tuple[str, str]]]] = []
        self.lock = threading.RLock()
        self._windows: dict[str, list[float]] = {}
        self._timers: list[threading.Timer] = []

    # -- seeding and control -------------------------------------------------------------

    def add_server(self, number: int, name: str, ip: str, ipv6_net: str = "", *,
                   product: str = "AX41-NVMe", dc: str = "FSN1-DC14", status: str = "ready",
                   gateway: str = "", mask: int = 26, machine: str = "",
                   reset_types: Sequence[str] = ("sw", "hw", "man"),
                   rescue_host_keys: Sequence[str] = ()) -> FakeServer:
        if not gateway:
            # Hetzner's convention: the gateway is the first address of the IP's network.
            network = ipaddress.ip_network(f"{ip}/{mask}", strict=False)
            gateway = str(network.network_address + 1)
        server = FakeServer(number, name, ip, ipv6_net, product, dc, status, gateway, mask,
                            machine or str(number), tuple(reset_types), tuple(rescue_host_keys))
        with self.lock:
            self.servers[number] = server
        return server

    def add_key(self, name: str, public_line: str) -> FakeKey:
        with self.lock:
            key = self._store_key(name, public_line)
            assert key is not None, f"not an OpenSSH public key: {public_line[:30]}"
            return key

    def inject(self, failure: str, times: int = 1) -> None:
        if failure not in FAILURES:
            raise ValueError(f"unknown failure {failure!r}; known: {', '.join(FAILURES)}")
        with self.lock:
            self.failures[failure] = self.failures.get(failure, 0) + times

    def set_status(self, number: int, status: str) -> None:
        with self.lock:
            self.servers[number].status = status

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()

    # -- helpers ---------------------------------------------------------------------------

    def _take(self, failure: str) -> bool:
        left = self.failures.get(failure, 0)
        if left <= 0:
            return False
        self.failures[failure] = left - 1
        return True

    def _store_key(self, name: str, public_line: str) -> FakeKey | None:
        parts = public_line.split()
        if len(parts) < 2:
            return None
        try:
            blob = base64.b64decode(parts[1], validate=True)
        except ValueError:
            return None
        kinds = {"ssh-ed25519": ("ED25519", 256), "ssh-rsa": ("RSA", 2048),
                 "ecdsa-sha2-nistp256": ("ECDSA", 256)}
        if parts[0] not in kinds:
            return None
        kind, size = kinds[parts[0]]
        key = FakeKey(name, _md5_fingerprint(blob), kind, size, " ".join(parts[:2]),
                      datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"))
        self.keys[key.fingerprint] = key
        return key

    def _rate_limited(self, method: str, resource: str) -> Answer | None:
        if self._take("rate_limit"):
            return _error(403, "RATE_LIMIT_EXCEEDED", "Rate limit exceeded",
                          max_request=self.max_request, interval=self.interval)
        now = self.clock()
        window = self._windows.setdefault(f"{method} {resource}", [])
        window[:] = [moment for moment in window if moment > now - self.interval]
        if len(window) >= self.max_request:
            return _error(403, "RATE_LIMIT_EXCEEDED", "Rate limit exceeded",
                          max_request=self.max_request, interval=self.interval)
        window.append(now)
        return None

    def _rescue_body(self, server: FakeServer) -> dict[str, Any]:
        armed = server.rescue
        body: dict[str, Any] = {"server_ip": server.ip, "server_ipv6_net": server.ipv6_net,
                                "server_number": server.number}
        if armed is None:
            body.update(os=list(RESCUE_OS), active=False, password=None, authorized_key=[],
                        host_key=[], boot_time=None)
        else:
            body.update(armed)
        return body

    def _authorized(self, fingerprints: Sequence[str]) -> list[dict[str, Any]]:
        return [{"key": {"name": self.keys[fingerprint].name, "fingerprint": fingerprint,
                         "type": self.keys[fingerprint].type,
                         "size": self.keys[fingerprint].size}}
                for fingerprint in fingerprints]

    # -- the machine room ------------------------------------------------------------------

    def _reboot(self, server: FakeServer, reset_type: str) -> None:
        if self._take("no_boot"):
            return
        timer = threading.Timer(self.boot_delay, self._boot, (server.number, reset_type))
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _boot(self, number: int, reset_type: str) -> None:
        with self.lock:
            server = self.servers[number]
            if reset_type == "power_long" or (reset_type == "power"
                                              and self.machines.running(server.machine)):
                self.machines.power_off(server.machine)
                return
            armed, server.rescue = server.rescue, None
            server.boots += 1
            keys: list[str] = []
            mode: BootMode = "disk"
            if armed is not None:
                # The activation is consumed by this boot; /rescue/last keeps it.
                fingerprints = [item["key"]["fingerprint"] for item in armed["authorized_key"]]
                keys = [self.keys[fingerprint].data for fingerprint in fingerprints
                        if fingerprint in self.keys]
                server.last_rescue = {**armed, "active": False, "password": None,
                                      "boot_time": datetime.now(UTC).isoformat(),
                                      "host_key": list(server.rescue_host_keys)}
                mode = "rescue"
        self.machines.power_on(server.machine, mode, keys)

    # -- the API ---------------------------------------------------------------------------

    def handle(self, method: str, path: str, form: list[tuple[str, str]],
               auth: tuple[str, str] | None) -> Answer:
        with self.lock:
            self.requests.append((method, path, form))
            if auth != (self.user, self.password):
                return _error(401, "UNAUTHORIZED", "Unauthorized")
            parts = [unquote(part) for part in path.strip("/").split("/") if part]
            if not parts:
                return _error(404, "NOT_FOUND", "Not found")
            limited = self._rate_limited(method, parts[0])
            if limited is not None:
                return limited
            if self._take("server_error"):
                return _error(500, "INTERNAL_ERROR", "Internal error")
            if self._take("in_process"):
                before = {number: server.status for number, server in self.servers.items()}
                for server in self.servers.values():
                    server.status = "in process"
                try:
                    return self._route(method, parts, form)
                finally:
                    for number, status in before.items():
                        self.servers[number].status = status
            return self._route(method, parts, form)

    def _route(self, method: str, parts: list[str], form: list[tuple[str, str]]) -> Answer:
        head, rest = parts[0], parts[1:]
        if head == "server" and method == "GET":
            if not rest:
                if not self.servers:
                    return _error(404, "SERVER_NOT_FOUND", "No servers found")
                return 200, [{"server": server.summary()}
                             for _, server in sorted(self.servers.items())]
            server = self._find(rest[0])
            if server is None:
                return _error(404, "SERVER_NOT_FOUND", "Server not found")
            body = server.summary()
            body.update(ip=[server.ip], subnet=[{"ip": server.ipv6_net, "mask": "64"}],
                        reset=bool(server.reset_types), rescue=True, vnc=True,
                        windows=False, plesk=False, cpanel=False, wol=True, hot_swap=False,
                        linked_storagebox=None)
            return 200, {"server": body}
        if head == "ip" and method == "GET" and len(rest) == 1:
            for server in self.servers.values():
                if server.ip == rest[0]:
                    network = ipaddress.ip_network(f"{server.ip}/{server.mask}", strict=False)
                    return 200, {"ip": {"ip": server.ip, "server_ip": server.ip,
                                        "server_number": server.number, "locked": False,
                                        "separate_mac": None, "traffic_warnings": False,
                                        "traffic_hourly": 200, "traffic_daily": 2000,
                                        "traffic_monthly": 20, "gateway": server.gateway,
                                        "mask": server.mask,
                                        "broadcast": str(network.broadcast_address)}}
            return _error(404, "IP_NOT_FOUND", "IP not found")
        if head == "key":
            return self._key(method, rest, form)
        if head == "boot" and rest:
            return self._boot_route(method, rest, form)
        if head == "reset":
            return self._reset(method, rest, form)
        return _error(404, "NOT_FOUND", "Not found")

    def _find(self, reference: str) -> FakeServer | None:
        if not reference.isdigit():
            return None
        return self.servers.get(int(reference))

    def _key(self, method: str, rest: list[str], form: list[tuple[str, str]]) -> Answer:
        if method == "GET" and not rest:
            if not self.keys:
                return _error(404, "NOT_FOUND", "No keys found")
            return 200, [{"key": key.body()} for key in self.keys.values()]
        if method == "GET" and len(rest) == 1:
            key = self.keys.get(rest[0])
            if key is None:
                return _error(404, "NOT_FOUND", "Key not found")
            return 200, {"key": key.body()}
        if method == "POST" and not rest:
            values = dict(form)
            missing = [name for name in ("name", "data") if not values.get(name)]
            if missing:
                return _invalid(missing=missing)
            parts = values["data"].split()
            if len(parts) >= 2:
                try:
                    fingerprint = _md5_fingerprint(base64.b64decode(parts[1], validate=True))
                except ValueError:
                    fingerprint = ""
                if fingerprint in self.keys:
                    return _error(409, "KEY_ALREADY_EXISTS", "The key already exists")
            key = self._store_key(values["name"], values["data"])
            if key is None:
                return _invalid(invalid=["data"])
            return 201, {"key": key.body()}
        return _error(404, "NOT_FOUND", "Not found")

    def _boot_route(self, method: str, rest: list[str], form: list[tuple[str, str]]) -> Answer:
        server = self._find(rest[0])
        if server is None:
            return _error(404, "SERVER_NOT_FOUND", "Server not found")
        if len(rest) == 1 and method == "GET":
            return 200, {"boot": {"rescue": self._rescue_body(server), "linux": None,
                                  "vnc": None, "windows": None, "plesk": None, "cpanel": None}}
        if rest[1:] == ["rescue", "last"] and method == "GET":
            if server.last_rescue is None:
                return _error(404, "NOT_FOUND", "No last rescue activation")
            return 200, {"rescue": {"server_ip": server.ip,
                                    "server_ipv6_net": server.ipv6_net,
                                    "server_number": server.number, **server.last_rescue}}
        if rest[1:] != ["rescue"]:
            return _error(404, "NOT_FOUND", "Not found")
        if method == "GET":
            return 200, {"rescue": self._rescue_body(server)}
        if method == "DELETE":
            if self._take("boot_deactivation_failed"):
                return _error(500, "BOOT_DEACTIVATION_FAILED",
                              "Deactivation of the boot configuration failed")
            server.rescue = None
            return 200, {"rescue": self._rescue_body(server)}
        if method != "POST":
            return _error(405, "METHOD_NOT_ALLOWED", "Method not allowed")
        if server.status != "ready":
            # An order, cancellation or technician's job is running on the server.
            return _error(404, "BOOT_NOT_AVAILABLE", "No boot configuration available "
                          "for this server while it is in process")
        values = dict(form)
        if not values.get("os"):
            return _invalid(missing=["os"])
        if values["os"] not in RESCUE_OS:
            return _invalid(invalid=["os"])
        fingerprints = [value for name, value in form
                        if name in ("authorized_key", "authorized_key[]")]
        if any(fingerprint not in self.keys for fingerprint in fingerprints):
            return _invalid(invalid=["authorized_key"])
        if server.rescue is not None:
            return _error(409, "BOOT_ALREADY_ENABLED", "A boot option is already active")
        if self._take("boot_activation_failed"):
            return _error(500, "BOOT_ACTIVATION_FAILED",
                          "Activation of the boot configuration failed")
        server.rescue = {"os": values["os"], "arch": 64, "active": True,
                         "password": secrets.token_urlsafe(9),
                         "authorized_key": self._authorized(fingerprints),
                         "host_key": [], "boot_time": None}
        return 200, {"rescue": self._rescue_body(server)}

    def _reset(self, method: str, rest: list[str], form: list[tuple[str, str]]) -> Answer:
        if not rest and method == "GET":
            return 200, [{"reset": {"server_ip": server.ip, "server_ipv6_net": server.ipv6_net,
                                    "server_number": server.number,
                                    "type": list(server.reset_types)}}
                         for server in self.servers.values() if server.reset_types]
        server = self._find(rest[0]) if rest else None
        if server is None:
            return _error(404, "SERVER_NOT_FOUND", "Server not found")
        if not server.reset_types:
            return _error(404, "RESET_NOT_AVAILABLE", "The server has no reset option")
        base = {"server_ip": server.ip, "server_ipv6_net": server.ipv6_net,
                "server_number": server.number}
        if method == "GET":
            return 200, {"reset": {**base, "type": list(server.reset_types),
                                   "operating_status": "not supported"}}
        if method != "POST":
            return _error(405, "METHOD_NOT_ALLOWED", "Method not allowed")
        reset_type = dict(form).get("type", "")
        if not reset_type:
            return _invalid(missing=["type"])
        if reset_type not in server.reset_types:
            return _invalid(invalid=["type"])
        if self._take("reset_failed"):
            return _error(500, "RESET_FAILED", "Resetting failed due to an internal error")
        self._reboot(server, reset_type)
        return 200, {"reset": {**base, "type": reset_type}}


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        form = parse_qsl(raw, keep_blank_values=True)
        auth: tuple[str, str] | None = None
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                auth = (user, password)
            except ValueError:
                auth = None
        status, body = self.server.api.handle(self.command, split.path, form, auth)
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="Robot Webservice"')
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    api: RobotApi


@dataclass
class RobotFake:
    """The fake on a port: `.url` for the driver's `api_url`, `.api` for seeding."""

    api: RobotApi
    http: _HttpServer
    thread: threading.Thread | None = field(default=None)

    @property
    def url(self) -> str:
        host, port = self.http.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> RobotFake:
        # A short poll interval keeps shutdown() quick (it waits for the next poll).
        self.thread = threading.Thread(target=self.http.serve_forever, args=(0.02,),
                                       daemon=True, name="robot-fake")
        self.thread.start()
        return self

    def serve_forever(self) -> None:
        self.http.serve_forever()

    def shutdown(self) -> None:
        self.api.close()
        self.http.shutdown()
        self.http.server_close()

    def inject(self, failure: str, times: int = 1) -> None:
        self.api.inject(failure, times)

    def add_server(self, number: int, name: str, ip: str, ipv6_net: str = "",
                   **options: Any) -> FakeServer:
        return self.api.add_server(number, name, ip, ipv6_net, **options)

    def add_key(self, name: str, public_line: str) -> FakeKey:
        return self.api.add_key(name, public_line)

    def set_status(self, number: int, status: str) -> None:
        self.api.set_status(number, status)


def make_server(machines: Machines, host: str = "127.0.0.1", port: int = 0,
                **options: Any) -> RobotFake:
    """A fake Robot webservice on `host:port` (0: a free port), not yet serving.

    Options: `user`, `password` (the webservice login it accepts), `boot_delay` (seconds
    between a reset and the machine's boot), `max_request`/`interval` (the rate limit).
    """
    api = RobotApi(machines, **options)
    http = _HttpServer((host, port), _Handler)
    http.api = api
    return RobotFake(api, http)


def main(argv: Sequence[str] | None = None, machines: Machines | None = None) -> int:
    """Run the fake in the foreground: `python -m clonefleet.fakes.robot --server ...`."""
    parser = argparse.ArgumentParser(prog="robot-fake", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--user", default="robot")
    parser.add_argument("--password", default="robot-secret")
    parser.add_argument("--boot-delay", type=float, default=5.0)
    parser.add_argument("--server", action="append", default=[],
                        metavar="NUMBER:NAME:IP[:IPV6NET]", help="seed a server (repeatable)")
    args = parser.parse_args(argv)
    fake = make_server(machines or RecordingMachines(), port=args.port, user=args.user,
                       password=args.password, boot_delay=args.boot_delay)
    for spec in args.server:
        number, name, ip, *ipv6 = spec.split(":", 3)
        fake.add_server(int(number), name, ip, ipv6[0] if ipv6 else "")
    print(f"Hetzner Robot fake at {fake.url} (user {args.user!r})", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        fake.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
