"""A stateful fake of the OVHcloud API v1 for dedicated servers, on loopback.

Only the calls clonefleet's `ovh` driver makes, answered the way the real API answers them
and the way python-ovh (1.2) reads them:

- every path lives under `/1.0`; `GET /auth/time` is unauthenticated and answers the epoch
  as a bare JSON integer;
- every other call is signed: `X-Ovh-Application`, `X-Ovh-Consumer`, `X-Ovh-Timestamp`,
  `X-Ovh-Signature = "$1$" + sha1(AS+"+"+CK+"+"+METHOD+"+"+URL+"+"+BODY+"+"+TS)` where URL
  is the full URL the client built (scheme, host, `/1.0`, path and query). The fake
  recomputes it and rejects a mismatch;
- authentication failures answer `{"errorCode", "httpCode", "message"}` (seen in OVH's own
  client issues): unknown application key 403 `INVALID_KEY` "This application key is
  invalid", unknown consumer key 403 `NOT_CREDENTIAL` "This credential does not exist", a
  consumer key not validated or expired 403 `INVALID_CREDENTIAL` "This credential is not
  valid", a call outside the consumer key's access rules 403 `NOT_GRANTED_CALL` "This call
  has not been granted", a wrong signature 400 `INVALID_SIGNATURE` "Invalid signature", no
  credentials at all 401;
- other errors answer `{"class": "Client::NotFound", "message": ...}` (go-ovh's APIError
  shape); a reboot creates a task (`function` "hardReboot") whose `status` moves through
  `init` → `todo` → `doing` → `done` (or `ovhError`) over time; the netboot (`bootId`) is
  read when the reboot happens: a rescue boot id boots the rescue system with
  `rescueSshKey`, the harddisk boot id boots the disk.

Not documented by OVH, so chosen here and marked as such: the exact message for an unknown
boot id and for a refused reboot, and the rate limit (OVH names none; its maintainers speak
of fair use around 60 requests a minute per consumer key). A rate-limited call answers 429.

Failures tests (and users, via `POST /__fake__/inject`) can inject, each for `times` calls:
`task_404` and `task_500` (the documented flap of a task read right after creation),
`task_error` (the next reboot task ends in `ovhError`, nothing boots), `server_error` (any
signed call answers 500), `bad_gateway` (502 with an HTML page, as a load balancer sends),
`rate_limit` (429), `reboot_refused` (409 on `POST .../reboot`).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from clonefleet.fakes.machines import Machines, RecordingMachines

API_PREFIX = "/1.0"
FAILURES = ("task_404", "task_500", "task_error", "server_error", "bad_gateway",
            "rate_limit", "reboot_refused")
WRITABLE = ("bootId", "rescueSshKey", "rescueMail", "monitoring", "noIntervention",
            "bootScript", "rootDevice", "efiBootloaderPath", "state")
SERVER_STATES = ("ok", "error", "hacked", "hackedBlocked")
TASK_STEPS = ("init", "todo", "doing")
ALL_RULES = tuple((method, "/*") for method in ("GET", "POST", "PUT", "DELETE"))

# The boots every server offers, as `GET /dedicated/server/{s}/boot/{id}` shows them. Real
# ids differ per server (the fake offsets them by server), so drivers must look them up.
BOOTS: tuple[tuple[str, str, str], ...] = (
    ("harddisk", "", "Boot from the hard disk"),
    ("rescue", "rescue-customer", "Customer rescue system (Linux)"),
    ("rescue", "rescue64-pro", "Rescue64 Pro (legacy)"),
    ("rescue", "WinRescue", "Windows rescue"),
    ("network", "ipxe-shell", "iPXE shell"),
)


class ApiError(Exception):
    """An answer other than 2xx: `status`, a JSON `body` (or raw `text`)."""

    def __init__(self, status: int, body: Any = None, text: str = "",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status, body)
        self.status, self.body, self.text = status, body, text
        self.headers = headers or {}


def auth_error(status: int, code: str, message: str) -> ApiError:
    reason = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden"}[status]
    return ApiError(status, {"errorCode": code, "httpCode": f"{status} {reason}",
                             "message": message})


def class_error(status: int, message: str) -> ApiError:
    names = {400: "Client::BadRequest", 404: "Client::NotFound", 409: "Client::Conflict",
             429: "Client::TooManyRequests", 500: "Server::InternalServerError"}
    return ApiError(status, {"class": names[status], "message": message})


@dataclass
class Credential:
    application_key: str
    application_secret: str
    consumer_key: str
    state: str = "validated"  # "validated" | "pendingValidation" | "expired"
    rules: tuple[tuple[str, str], ...] = ALL_RULES


@dataclass
class Task:
    task_id: int
    service: str
    function: str
    created: float
    status: str = "init"
    comment: str = "Reboot asked"
    done_at: float | None = None
    fails: bool = False

    def payload(self, now: float, step: float) -> dict[str, Any]:
        status = self.status
        if status == "init":
            status = TASK_STEPS[min(len(TASK_STEPS) - 1, int((now - self.created) / step))]
        started = _iso(self.created)
        return {"taskId": self.task_id, "function": self.function, "status": status,
                "comment": self.comment, "startDate": started,
                "lastUpdate": _iso(self.done_at or now),
                "doneDate": _iso(self.done_at) if self.done_at else None,
                "needSchedule": False, "plannedInterventionId": None,
                "ticketReference": None, "note": None}


def _iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(stamp))


@dataclass
class Server:
    name: str
    ip: str
    server_id: int
    datacenter: str
    boots: dict[int, tuple[str, str, str]]
    ipv6: str = ""
    boot_id: int = 0
    rescue_ssh_key: str = ""
    rescue_mail: str = ""
    state: str = "ok"
    power_state: str = "poweron"
    extra: dict[str, Any] = field(default_factory=dict)

    def boot_ids(self, boot_type: str) -> list[int]:
        return [boot for boot, (kind, _, _) in self.boots.items() if kind == boot_type]

    def payload(self) -> dict[str, Any]:
        reverse = self.name if self.name.endswith(".") else f"{self.name}."
        data = {"name": self.name, "serverId": self.server_id, "ip": self.ip,
                "bootId": self.boot_id, "bootScript": None, "commercialRange": "advance-1",
                "datacenter": self.datacenter, "region": self.datacenter.rstrip("0123456789"),
                "availabilityZone": f"{self.datacenter}-a", "linkSpeed": 1000,
                "monitoring": False, "noIntervention": False, "os": "none_64",
                "powerState": self.power_state, "professionalUse": False,
                "rack": "G101A01", "rescueMail": self.rescue_mail or None,
                "rescueSshKey": self.rescue_ssh_key or None, "reverse": reverse,
                "rootDevice": None, "efiBootloaderPath": None, "state": self.state,
                "supportLevel": "pro", "newUpgradeSystem": True,
                "iam": {"id": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.name)),
                        "urn": f"urn:v1:eu:resource:dedicatedServer:{self.name}"}}
        data.update(self.extra)
        return data


class OvhFake(ThreadingHTTPServer):
    """The fake API. `url` is what a python-ovh endpoint (or the driver's `api_url`) takes."""

    daemon_threads = True

    def __init__(self, machines: Machines, host: str = "127.0.0.1", port: int = 0, *,
                 application_key: str = "lab-application-key",
                 application_secret: str = "lab-application-secret",
                 consumer_key: str = "lab-consumer-key",
                 task_step: float = 1.0, rate_limit: tuple[int, float] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__((host, port), _Handler)
        self.machines = machines
        self.task_step = task_step
        self.rate_limit = rate_limit  # (requests, seconds) per consumer key, or None
        self.clock = clock
        self.lock = threading.RLock()
        self.applications: dict[str, str] = {}  # application key -> secret
        self.credentials: dict[str, Credential] = {}
        self.servers: dict[str, Server] = {}
        self.tasks: dict[int, Task] = {}
        self.failures: dict[str, int] = {}
        self.requests: list[tuple[str, str, Any]] = []  # (method, path, body) of signed calls
        self._calls: dict[str, list[float]] = {}
        self._task_ids = itertools.count(4_200_000)
        self._server_ids = itertools.count(101_000)
        self._timers: list[threading.Timer] = []
        self._thread: threading.Thread | None = None
        self.add_credential(application_key, application_secret, consumer_key)

    # -- seeding and control ---------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self.server_address[0], self.server_address[1]
        name = host.decode() if isinstance(host, bytes) else host
        return f"http://{name}:{port}{API_PREFIX}"

    def add_credential(self, application_key: str, application_secret: str,
                       consumer_key: str, *, state: str = "validated",
                       rules: Iterable[tuple[str, str]] = ALL_RULES) -> Credential:
        credential = Credential(application_key, application_secret, consumer_key, state,
                                tuple(rules))
        with self.lock:
            self.applications[application_key] = application_secret
            self.credentials[consumer_key] = credential
        return credential

    def add_server(self, service_name: str, ip: str, *, ipv6: str = "",
                   datacenter: str = "gra3", boot: str = "harddisk",
                   power_on: bool = True) -> Server:
        """Seed a delivered server; it runs its disk (as after OVH's own install).
        `power_on=False` leaves its machine off until the first reboot task: a blank lab VM
        has nothing to boot."""
        with self.lock:
            server_id = next(self._server_ids)
            # Boot ids differ per server on the real API; make them differ here too.
            base = 1 if not self.servers else 1 + 1000 * len(self.servers)
            boots = {base + index * 7: boot_kind for index, boot_kind in enumerate(BOOTS)}
            server = Server(service_name, ip, server_id, datacenter, boots, ipv6=ipv6)
            server.boot_id = server.boot_ids(boot)[0]
            self.servers[service_name] = server
        if boot == "harddisk" and power_on:
            self.machines.power_on(service_name, "disk", [])
        return server

    def server(self, service_name: str) -> Server:
        with self.lock:
            return self.servers[service_name]

    def boot_type(self, service_name: str) -> str:
        """What the server's current netboot is: "harddisk", "rescue", ..."""
        with self.lock:
            server = self.servers[service_name]
            return server.boots[server.boot_id][0]

    def inject(self, failure: str, times: int = 1) -> None:
        if failure not in FAILURES:
            raise ValueError(f"unknown failure {failure!r}; one of {', '.join(FAILURES)}")
        with self.lock:
            self.failures[failure] = self.failures.get(failure, 0) + times

    def start(self) -> OvhFake:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={
            "poll_interval": 0.05}, name="ovh-fake", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        if self._thread is not None:  # serve_forever runs: stop it (blocks otherwise)
            super().shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        with self.lock:
            for timer in self._timers:
                timer.cancel()
        self.server_close()

    # -- the API ---------------------------------------------------------------------------

    def take(self, failure: str) -> bool:
        with self.lock:
            left = self.failures.get(failure, 0)
            if left <= 0:
                return False
            self.failures[failure] = left - 1
            return True

    def authenticate(self, method: str, url: str, path: str, body: str,
                     headers: Any) -> None:
        application = headers.get("X-Ovh-Application")
        if not application:
            raise auth_error(401, "NOT_AUTHENTICATED", "You must login first")
        with self.lock:
            secret = self.applications.get(application)
            consumer = headers.get("X-Ovh-Consumer") or ""
            credential = self.credentials.get(consumer)
        if secret is None:
            raise auth_error(403, "INVALID_KEY", "This application key is invalid")
        timestamp = headers.get("X-Ovh-Timestamp") or ""
        signature = headers.get("X-Ovh-Signature") or ""
        if not consumer or not timestamp or not signature:
            raise auth_error(401, "NOT_AUTHENTICATED", "You must login first")
        if credential is None or credential.application_key != application:
            raise auth_error(403, "NOT_CREDENTIAL", "This credential does not exist")
        expected = "$1$" + hashlib.sha1("+".join(
            [secret, consumer, method, url, body, timestamp]).encode()).hexdigest()
        if signature != expected:
            raise auth_error(400, "INVALID_SIGNATURE", "Invalid signature")
        if credential.state != "validated":
            raise auth_error(403, "INVALID_CREDENTIAL", "This credential is not valid")
        if not any(rule_method == method and fnmatch.fnmatchcase(path, rule_path)
                   for rule_method, rule_path in credential.rules):
            raise auth_error(403, "NOT_GRANTED_CALL", "This call has not been granted")
        self._throttle(consumer)

    def _throttle(self, consumer: str) -> None:
        if self.take("rate_limit"):
            raise class_error(429, "Too many requests")
        if self.rate_limit is None:
            return
        allowed, window = self.rate_limit
        now = self.clock()
        with self.lock:
            recent = [stamp for stamp in self._calls.get(consumer, []) if now - stamp < window]
            if len(recent) >= allowed:
                self._calls[consumer] = recent
                raise class_error(429, "Too many requests")
            recent.append(now)
            self._calls[consumer] = recent

    def route(self, method: str, path: str, query: dict[str, list[str]],
              data: Any) -> Any:
        parts = path.strip("/").split("/")
        if parts[:2] != ["dedicated", "server"]:
            raise class_error(404, f"Got an invalid (or empty) URL: {path}")
        if self.take("server_error"):
            raise class_error(500, "Internal server error")
        if self.take("bad_gateway"):
            raise ApiError(502, text="<html><body><h1>502 Bad Gateway</h1></body></html>")
        if len(parts) == 2 and method == "GET":
            with self.lock:
                return sorted(self.servers)
        if len(parts) < 3:
            raise class_error(404, f"Got an invalid (or empty) URL: {path}")
        server = self._server(parts[2])
        rest = parts[3:]
        if not rest:
            if method == "GET":
                with self.lock:
                    return server.payload()
            if method == "PUT":
                return self._update(server, data)
        elif rest == ["boot"] and method == "GET":
            return self._boots(server, query)
        elif len(rest) == 2 and rest[0] == "boot" and method == "GET":
            return self._boot(server, rest[1])
        elif rest == ["reboot"] and method == "POST":
            return self._reboot(server)
        elif rest == ["task"] and method == "GET":
            return self._task_list(server, query)
        elif len(rest) == 2 and rest[0] == "task" and method == "GET":
            return self._task(server, rest[1])
        elif rest == ["ips"] and method == "GET":
            ips = [f"{server.ip}/32"] + ([f"{server.ipv6}/64"] if server.ipv6 else [])
            return ips
        raise class_error(404, f"Got an invalid (or empty) URL: {path}")

    def _server(self, name: str) -> Server:
        with self.lock:
            server = self.servers.get(name)
        if server is None:
            raise class_error(404, f"The requested object (serviceName = {name}) does not "
                                   "exist")
        return server

    def _update(self, server: Server, data: Any) -> None:
        if not isinstance(data, dict) or not data:
            raise class_error(400, "Invalid body: expected an object with the properties "
                                   "to change")
        unknown = sorted(set(data) - set(WRITABLE))
        if unknown:
            raise class_error(400, f"Unknown parameter(s): {', '.join(unknown)}")
        if "bootId" in data:
            boot_id = data["bootId"]
            if not isinstance(boot_id, int) or isinstance(boot_id, bool):
                raise class_error(400, f"[bootId] Given data ({boot_id}) is not valid for "
                                       "type long")
            if boot_id not in server.boots:
                # Message not documented by OVH.
                raise class_error(400, f"The boot id {boot_id} is not available for this "
                                       "server")
        if "state" in data and data["state"] not in SERVER_STATES:
            raise class_error(400, f"[state] Given data ({data['state']}) does not belong "
                                   "to the dedicated.server.StateEnum enumeration")
        with self.lock:
            if "bootId" in data:
                server.boot_id = data["bootId"]
            if "rescueSshKey" in data:
                server.rescue_ssh_key = data["rescueSshKey"] or ""
            if "rescueMail" in data:
                server.rescue_mail = data["rescueMail"] or ""
            if "state" in data:
                server.state = data["state"]
            for key in ("monitoring", "noIntervention", "bootScript", "rootDevice",
                        "efiBootloaderPath"):
                if key in data:
                    server.extra[key] = data[key]
        return None

    def _boots(self, server: Server, query: dict[str, list[str]]) -> list[int]:
        wanted_type = query.get("bootType", [None])[0]
        wanted_kernel = query.get("kernel", [None])[0]
        return sorted(boot for boot, (kind, kernel, _) in server.boots.items()
                      if (wanted_type is None or kind == wanted_type)
                      and (wanted_kernel is None or kernel == wanted_kernel))

    def _boot(self, server: Server, boot: str) -> dict[str, Any]:
        boot_id = int(boot) if boot.isdigit() else -1
        if boot_id not in server.boots:
            raise class_error(404, f"The requested object (bootId = {boot}) does not exist")
        kind, kernel, description = server.boots[boot_id]
        return {"bootId": boot_id, "bootType": kind, "kernel": kernel,
                "description": description}

    def _reboot(self, server: Server) -> dict[str, Any]:
        if self.take("reboot_refused"):
            # Message not documented by OVH.
            raise class_error(409, "A reboot task is already in progress on this server")
        now = self.clock()
        with self.lock:
            task = Task(next(self._task_ids), server.name, "hardReboot", now,
                        fails=self.take("task_error"))
            self.tasks[task.task_id] = task
            timer = threading.Timer(self.task_step * len(TASK_STEPS), self._finish,
                                    args=(task.task_id,))
            timer.daemon = True
            self._timers.append(timer)
        timer.start()
        return task.payload(now, self.task_step)

    def _finish(self, task_id: int) -> None:
        with self.lock:
            task = self.tasks[task_id]
            server = self.servers[task.service]
            task.done_at = self.clock()
            if task.fails:
                task.status, task.comment = "ovhError", "Reboot failed, an OVHcloud " \
                    "technician has been notified"
                return
            task.status, task.comment = "done", "Reboot done"
            kind = server.boots[server.boot_id][0]
            keys = [server.rescue_ssh_key] if server.rescue_ssh_key else []
            server.power_state = "poweron"
        if kind == "rescue":
            self.machines.power_on(server.name, "rescue", keys)
        elif kind == "harddisk":
            self.machines.power_on(server.name, "disk", [])
        else:
            self.machines.power_off(server.name)

    def _task_list(self, server: Server, query: dict[str, list[str]]) -> list[int]:
        function = query.get("function", [None])[0]
        status = query.get("status", [None])[0]
        now = self.clock()
        with self.lock:
            tasks = [task for task in self.tasks.values() if task.service == server.name]
            return [task.task_id for task in tasks
                    if (function is None or task.function == function)
                    and (status is None or task.payload(now, self.task_step)["status"]
                         == status)]

    def _task(self, server: Server, task: str) -> dict[str, Any]:
        task_id = int(task) if task.isdigit() else -1
        if self.take("task_404"):
            raise class_error(404, f"The requested object (taskId = {task}) does not exist")
        if self.take("task_500"):
            raise class_error(500, "Internal server error")
        with self.lock:
            found = self.tasks.get(task_id)
            if found is None or found.service != server.name:
                raise class_error(404, f"The requested object (taskId = {task}) does not "
                                       "exist")
            return found.payload(self.clock(), self.task_step)

    # -- the fake's own control path (the real API has no /__fake__) -------------------

    def control(self, method: str, path: str, data: Any) -> Any:
        if method == "POST" and path == "/__fake__/inject":
            self.inject(str(data.get("failure")), int(data.get("times", 1)))
            return {"failures": dict(self.failures)}
        if method == "POST" and path == "/__fake__/servers":
            server = self.add_server(str(data["service_name"]), str(data["ip"]),
                                     ipv6=str(data.get("ipv6", "")),
                                     datacenter=str(data.get("datacenter", "gra3")))
            return server.payload()
        raise class_error(404, f"Got an invalid (or empty) URL: {path}")


class _Handler(BaseHTTPRequestHandler):
    server: OvhFake
    protocol_version = "HTTP/1.1"
    # Headers and body leave in one segment: split writes meet delayed ACKs (40 ms a call).
    wbufsize = -1
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _answer(self) -> None:
        fake = self.server
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        split = urlsplit(self.path)
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            self._send(class_error(400, "Invalid JSON body"))
            return
        try:
            if split.path.startswith("/__fake__/"):
                self._send_json(200, fake.control(self.command, split.path, data or {}))
                return
            if not split.path.startswith(API_PREFIX + "/"):
                raise class_error(404, f"Got an invalid (or empty) URL: {split.path}")
            path = split.path[len(API_PREFIX):]
            if path == "/auth/time" and self.command == "GET":
                self._send_json(200, int(fake.clock()))
                return
            url = f"http://{self.headers.get('Host', '')}{self.path}"
            fake.authenticate(self.command, url, path, raw, self.headers)
            with fake.lock:
                fake.requests.append((self.command, path, data))
            result = fake.route(self.command, path, parse_qs(split.query), data)
            self._send_json(200, result)
        except ApiError as error:
            self._send(error)

    def _send(self, error: ApiError) -> None:
        if error.body is None:
            payload = error.text.encode()
            content_type = "text/html"
        else:
            payload = json.dumps(error.body).encode()
            content_type = "application/json; charset=utf-8"
        self._write(error.status, payload, content_type)

    def _send_json(self, status: int, body: Any) -> None:
        self._write(status, json.dumps(body).encode(), "application/json; charset=utf-8")

    def _write(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-Ovh-Queryid", f"EU.ext-1.{uuid.uuid4().hex[:8]}.fake")
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _answer


def make_server(machines: Machines, host: str = "127.0.0.1", port: int = 0,
                **options: Any) -> OvhFake:
    """The contract's constructor: options are `OvhFake`'s keywords (credentials,
    `task_step` seconds per task status, `rate_limit`)."""
    return OvhFake(machines, host, port, **options)


def main(argv: Sequence[str] | None = None, machines: Machines | None = None) -> int:
    """Run the fake in the foreground with servers given on the command line
    (`clonefleet lab api PROVIDER` builds it from the fleet file instead)."""
    parser = argparse.ArgumentParser(prog="clonefleet lab api ovh",
                                     description="a local fake of the OVHcloud API v1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--server", action="append", default=[], metavar="SERVICE=IP",
                        help="seed a dedicated server (repeatable)")
    parser.add_argument("--task-step", type=float, default=2.0,
                        help="seconds each task status lasts (default 2)")
    parser.add_argument("--application-key", default="lab-application-key")
    parser.add_argument("--application-secret", default="lab-application-secret")
    parser.add_argument("--consumer-key", default="lab-consumer-key")
    arguments = parser.parse_args(argv)
    fake = make_server(machines or RecordingMachines(), arguments.host, arguments.port,
                       application_key=arguments.application_key,
                       application_secret=arguments.application_secret,
                       consumer_key=arguments.consumer_key, task_step=arguments.task_step)
    for item in arguments.server:
        service, _, ip = item.partition("=")
        fake.add_server(service, ip)
    print(f"OVH API fake at {fake.url}", flush=True)
    print(f"OVH_APPLICATION_KEY={arguments.application_key} "
          f"OVH_APPLICATION_SECRET={arguments.application_secret} "
          f"OVH_CONSUMER_KEY={arguments.consumer_key}", flush=True)
    try:
        fake.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        fake.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
