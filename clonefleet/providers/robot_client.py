"""A small client of the Hetzner Robot webservice (dedicated servers), over `requests`.

No maintained Python client takes a base URL, and the local fake needs one, so this is ours.
The webservice is synchronous: no action objects to follow, so callers confirm reboots over
SSH themselves. Requests are form-encoded, answers JSON, auth is HTTP Basic.

Every API error becomes one `RobotApiError` carrying Robot's `status` and `code`. Transient
ones (403 `RATE_LIMIT_EXCEEDED`, any 5xx, connection errors) are retried with the shared
policy until a bounded deadline; a 401 is never retried (Robot blocks the client address
after repeated failed logins).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests

from clonefleet.errors import ProviderError
from clonefleet.retry import GaveUp, RetryPolicy, retry
from clonefleet.ssh import public_key_md5

DEFAULT_URL = "https://robot-ws.your-server.de"
RETRY_POLICY = RetryPolicy(first=2.0, cap=30.0, factor=2.0, jitter=0.2)


class RobotApiError(ProviderError):
    """Robot answered with `{"error": {status, code, message, ...}}`, or could not be reached
    (`status` 0, `code` "CONNECTION")."""

    def __init__(self, message: str, *, status: int, code: str, method: str = "",
                 path: str = "", invalid: Sequence[str] = (), missing: Sequence[str] = (),
                 max_request: int | None = None, interval: int | None = None) -> None:
        self.status, self.code, self.method, self.path = status, code, method, path
        self.invalid, self.missing = tuple(invalid), tuple(missing)
        self.max_request, self.interval = max_request, interval
        # Worth another try after a pause: Robot's "later" answers and no answer at all.
        self.transient = code in ("RATE_LIMIT_EXCEEDED", "CONNECTION") or status >= 500
        super().__init__(message)


@dataclass(frozen=True)
class RobotServer:
    number: int
    name: str
    ip: str
    ipv6_net: str
    product: str
    dc: str
    status: str  # "ready" | "in process"
    cancelled: bool = False


@dataclass(frozen=True)
class RobotKey:
    name: str
    fingerprint: str  # MD5, colon-separated hex: what `authorized_key[]` takes
    type: str
    size: int
    data: str


@dataclass(frozen=True)
class Rescue:
    server_number: int
    active: bool
    os: str  # the active (or last) rescue OS; "" when inactive
    password: str | None
    authorized_keys: tuple[str, ...]  # fingerprints
    host_keys: tuple[str, ...]  # as Robot reports them; often empty until the rescue booted
    boot_time: str | None = None


@dataclass(frozen=True)
class ResetOptions:
    server_number: int
    types: tuple[str, ...]
    operating_status: str = ""


@dataclass(frozen=True)
class IpInfo:
    ip: str
    server_number: int
    gateway: str
    mask: int
    broadcast: str


def md5_fingerprint(public_line: str) -> str:
    """Robot's key fingerprint: MD5 of the key blob, colon-separated lowercase hex."""
    fingerprint = public_key_md5(public_line)
    if fingerprint is None:
        raise ValueError(f"not an OpenSSH public key line: {public_line[:40]!r}")
    return fingerprint


def _host_key_strings(value: Any) -> tuple[str, ...]:
    # Documented as an array; every example is empty. Accept plain strings and
    # {"key": {"fingerprint": ...}} objects alike (the shape authorized_key uses).
    keys: list[str] = []
    for item in value or ():
        if isinstance(item, str):
            keys.append(item)
        elif isinstance(item, dict):
            inner = item.get("key", item)
            if isinstance(inner, dict) and inner.get("fingerprint"):
                keys.append(str(inner["fingerprint"]))
    return tuple(keys)


def _rescue(body: Mapping[str, Any]) -> Rescue:
    active = bool(body.get("active"))
    os_value = body.get("os")
    return Rescue(
        server_number=int(body.get("server_number", 0)),
        active=active,
        os=os_value if isinstance(os_value, str) else "",
        password=body.get("password"),
        authorized_keys=_host_key_strings(body.get("authorized_key")),
        host_keys=_host_key_strings(body.get("host_key")),
        boot_time=body.get("boot_time"),
    )


def _server(body: Mapping[str, Any]) -> RobotServer:
    return RobotServer(number=int(body["server_number"]), name=str(body.get("server_name") or ""),
                       ip=str(body.get("server_ip") or ""),
                       ipv6_net=str(body.get("server_ipv6_net") or ""),
                       product=str(body.get("product") or ""), dc=str(body.get("dc") or ""),
                       status=str(body.get("status") or ""),
                       cancelled=bool(body.get("cancelled")))


class RobotClient:
    """Typed calls to the Robot webservice at `base_url` (no trailing slash needed)."""

    def __init__(self, base_url: str, user: str, password: str, *,
                 credentials_hint: str = "", timeout: float = 30.0,
                 retry_timeout: float = 120.0, policy: RetryPolicy = RETRY_POLICY,
                 session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 log: Callable[[str], None] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.credentials_hint = credentials_hint
        self.timeout, self.retry_timeout, self.policy = timeout, retry_timeout, policy
        self.sleep = sleep
        self.log = log
        self.session = session or requests.Session()
        self.session.auth = (user, password)
        self.session.headers["Accept"] = "application/json"

    # -- transport -------------------------------------------------------------------------

    def _once(self, method: str, path: str, data: Any = None) -> Any:
        url = self.base_url + path
        try:
            response = self.session.request(method, url, data=data, timeout=self.timeout)
        except requests.RequestException as error:
            raise RobotApiError(f"Hetzner Robot at {self.base_url} did not answer {method} "
                                f"{path}: {type(error).__name__}", status=0,
                                code="CONNECTION", method=method, path=path) from None
        try:
            body = response.json() if response.content else None
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            raise self._error(method, path, response.status_code, body["error"])
        if response.status_code >= 400:
            raise RobotApiError(f"Hetzner Robot {method} {path}: HTTP {response.status_code} "
                                "without an error body", status=response.status_code,
                                code="HTTP_" + str(response.status_code), method=method,
                                path=path)
        return body

    def _error(self, method: str, path: str, http_status: int,
               error: Mapping[str, Any]) -> RobotApiError:
        status = int(error.get("status") or http_status)
        code = str(error.get("code") or "UNKNOWN")
        message = str(error.get("message") or "")
        detail = f"Hetzner Robot {method} {path}: {status} {code} ({message})"
        invalid = list(error.get("invalid") or ())
        missing = list(error.get("missing") or ())
        if invalid or missing:
            detail += (f"; invalid: {', '.join(invalid) or '-'}, "
                       f"missing: {', '.join(missing) or '-'}")
        if code == "UNAUTHORIZED" or status == 401:
            detail = (f"Hetzner Robot rejected the webservice login{self.credentials_hint} "
                      f"(401 on {method} {path}); use a webservice user from Robot → Settings "
                      "→ Webservice and app settings, not the account login — and fix it "
                      "before retrying: Robot blocks addresses after repeated failed logins")
        elif code == "RATE_LIMIT_EXCEEDED":
            detail = (f"Hetzner Robot rate limit on {method} {path}: at most "
                      f"{error.get('max_request')} requests per {error.get('interval')} s; "
                      "wait and run the command again")
        return RobotApiError(detail, status=status, code=code, method=method, path=path,
                             invalid=invalid, missing=missing,
                             max_request=error.get("max_request"),
                             interval=error.get("interval"))

    def request(self, method: str, path: str, data: Any = None) -> Any:
        """One call, retried while Robot says "later" (rate limit, 5xx, no answer)."""

        def note(attempt: int, error: BaseException, delay: float) -> None:
            if self.log is not None:
                self.log(f"robot: {method} {path} failed ({error}); retry {attempt} in "
                         f"{delay:.1f} s")

        try:
            return retry(lambda: self._once(method, path, data), what=f"Robot {method} {path}",
                         timeout=self.retry_timeout, policy=self.policy, on_retry=note,
                         sleep=self.sleep)
        except GaveUp as gave_up:
            last = gave_up.last
            if isinstance(last, RobotApiError):
                raise RobotApiError(f"{last} (gave up after {gave_up.attempts} attempts in "
                                    f"{gave_up.seconds:.0f} s)", status=last.status,
                                    code=last.code, method=method, path=path,
                                    max_request=last.max_request,
                                    interval=last.interval) from None
            raise

    # -- calls -----------------------------------------------------------------------------

    def servers(self) -> list[RobotServer]:
        try:
            body = self.request("GET", "/server")
        except RobotApiError as error:
            if error.code == "SERVER_NOT_FOUND":  # Robot's answer for "no servers at all"
                return []
            raise
        return [_server(item["server"]) for item in body or ()]

    def server(self, number: int) -> RobotServer:
        return _server(self.request("GET", f"/server/{number}")["server"])

    def ip(self, address: str) -> IpInfo:
        body = self.request("GET", f"/ip/{address}")["ip"]
        return IpInfo(ip=body["ip"], server_number=int(body["server_number"]),
                      gateway=str(body.get("gateway") or ""), mask=int(body.get("mask") or 32),
                      broadcast=str(body.get("broadcast") or ""))

    def ssh_keys(self) -> list[RobotKey]:
        try:
            body = self.request("GET", "/key")
        except RobotApiError as error:
            if error.code == "NOT_FOUND":  # no keys stored yet
                return []
            raise
        return [RobotKey(name=item["key"]["name"], fingerprint=item["key"]["fingerprint"],
                         type=item["key"].get("type", ""), size=int(item["key"].get("size", 0)),
                         data=item["key"].get("data", "")) for item in body or ()]

    def add_key(self, name: str, data: str) -> RobotKey:
        body = self.request("POST", "/key", {"name": name, "data": data})["key"]
        return RobotKey(name=body["name"], fingerprint=body["fingerprint"],
                        type=body.get("type", ""), size=int(body.get("size", 0)),
                        data=body.get("data", ""))

    def rescue(self, number: int) -> Rescue:
        return _rescue(self.request("GET", f"/boot/{number}/rescue")["rescue"])

    def last_rescue(self, number: int) -> Rescue:
        return _rescue(self.request("GET", f"/boot/{number}/rescue/last")["rescue"])

    def activate_rescue(self, number: int, fingerprints: Sequence[str],
                        os: str = "linux") -> Rescue:
        form: list[tuple[str, str]] = [("os", os)]
        form += [("authorized_key[]", fingerprint) for fingerprint in fingerprints]
        return _rescue(self.request("POST", f"/boot/{number}/rescue", form)["rescue"])

    def deactivate_rescue(self, number: int) -> Rescue:
        return _rescue(self.request("DELETE", f"/boot/{number}/rescue")["rescue"])

    def reset_options(self, number: int) -> ResetOptions:
        body = self.request("GET", f"/reset/{number}")["reset"]
        types = body.get("type") or []
        return ResetOptions(server_number=int(body["server_number"]),
                            types=tuple([types] if isinstance(types, str) else types),
                            operating_status=str(body.get("operating_status") or ""))

    def reset(self, number: int, reset_type: str) -> str:
        body = self.request("POST", f"/reset/{number}", {"type": reset_type})["reset"]
        return str(body.get("type", reset_type))
