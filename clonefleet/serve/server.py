"""The drain endpoint and the metrics page: HTTP(S) with the standard library.

    POST /v1/drain
    Authorization: Bearer <node token>
    Content-Length: <bytes>
    {"node": "fsn-1", "request_id": "...", "reason": "...", "findings": [...]}

    200 {"result": "drained" | "already-drained", "node", "state", "confirmed", "unreachable"}
    400 {"result": "bad-request", "error"}       malformed JSON, fields or Content-Length
    401 {"result": "unauthorized"}               no token, a token no node has, or a node's
                                                 token naming another node; judged before the
                                                 body is read, so it wins over any 400
    408 {"result": "timeout"}                    the body did not arrive within the read timeout
    409 {"result": "refused", "reason"}          DrainRefused: it would empty a region (or the
                                                 node is not active); the agent pages loudly
    411 {"result": "length-required"}            no Content-Length (chunked bodies are refused)
    413 {"result": "too-large"}                  a body over MAX_BODY bytes
    422 {"result": "failed", "error"}            another clonefleet error the operator must fix
    503 {"result": "not-confirmed", "error"}     recorded, but a DNS server still serves the node:
                                                 the agent retries, which republishes
    GET /v1/health → 200 {"ok": true}
    GET /metrics   → Prometheus text format (docs/metrics.md); open to whoever reaches the
                     port, or only with `Authorization: Bearer <metrics token>` when serve has one
    any other path → 404; another method on these paths → 405

Run it behind the WireGuard mesh, or with --tls-cert/--tls-key: the token is a bearer secret.

What a client gets wrong is its fault, never the server's: it is answered with a 4xx or its
connection is closed, and it costs one log line, never a traceback. The whole request (head and
body) must arrive within `read_timeout` seconds of the connection, so a stalled or trickling
client holds its worker thread that long at most, and the TLS handshake runs in that thread
under the same limit rather than in the one accepting connections.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from clonefleet.dnsmap import DrainRefused, DrainResult, drain_node
from clonefleet.dnsmap.errors import DrainNotConfirmed
from clonefleet.errors import ClonefleetError, ConfigError, one_line
from clonefleet.inventory import Fleet
from clonefleet.serve.metrics import metrics_registry
from clonefleet.serve.tokens import token_owner
from clonefleet.state import StateStore

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

log = logging.getLogger("clonefleet.serve")

MAX_BODY = 64 * 1024
MAX_REASON = 2000
LAST_REQUEST_FACT = "drain_last_request"
READ_TIMEOUT = 10.0
# A body left unread when answering early (401, 413) is read and dropped, this much at most
# for this long at most, before the connection is closed: closing with unread data makes the
# kernel send a reset, which can destroy the answer before the client has read it.
DISCARD_LIMIT = 4 * MAX_BODY
DISCARD_SECONDS = 2.0
# Connections served at once: every node's agent and a scraper or two, with room to spare;
# each holds a thread for the read timeout at most.
MAX_CONNECTIONS = 64

ROUTES = {"/v1/drain": "POST", "/v1/health": "GET", "/metrics": "GET"}
BYTE_COUNT = re.compile(r"[0-9]{1,12}")
UNAUTHORIZED: dict[str, Any] = {"result": "unauthorized"}

DrainFunction = Callable[..., DrainResult]


class DrainService:
    """Given the fleet and its state store, answer drain requests from nodes."""

    def __init__(self, fleet: Fleet, store: StateStore, *, drain: DrainFunction = drain_node,
                 timeout: float = 60.0) -> None:
        self.fleet = fleet
        self.store = store
        self.drain = drain
        self.timeout = timeout
        # One drain at a time: two nodes of a region failing together must be judged one
        # after the other against the region's floor.
        self._lock = threading.Lock()

    def caller(self, token: str) -> str | None:
        """The node whose current drain token `token` is, or None."""
        return token_owner(self.fleet, self.store, token)

    def handle_drain(self, token: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """The caller is judged before the body: without a node's current token the answer is
        401 whatever the body holds, so a stranger learns nothing about the request format."""
        caller = self.caller(token)
        if caller is None:
            return 401, dict(UNAUTHORIZED)
        return self.drain_for(caller, body)

    def drain_for(self, caller: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """Given the node the token belongs to and the request body, drain that node."""
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return 400, {"result": "bad-request", "error": "body is not JSON"}
        if not isinstance(request, dict):
            return 400, {"result": "bad-request", "error": "body must be a JSON object"}
        node = request.get("node")
        reason = request.get("reason")
        request_id = str(request.get("request_id") or "")
        if not isinstance(node, str) or not node:
            return 400, {"result": "bad-request", "error": "'node' must be a node name"}
        # A token drains only its own node; another name looks the same as a wrong token.
        if node != caller:
            return 401, dict(UNAUTHORIZED)
        if not isinstance(reason, str) or not reason.strip():
            return 400, {"result": "bad-request", "error": "'reason' must be a non-empty text"}
        reason = one_line(reason, MAX_REASON)
        self.store.set_fact(node, LAST_REQUEST_FACT,
                            {"request_id": request_id, "reason": reason})
        with self._lock:
            try:
                result = self.drain(self.fleet, self.store, node,
                                    reason=f"smartwatch: {reason}", actor=f"smartwatch@{node}",
                                    timeout=self.timeout)
            except DrainRefused as error:
                return 409, {"result": "refused", "node": node, "reason": str(error),
                             "request_id": request_id}
            except DrainNotConfirmed as error:
                return 503, {"result": "not-confirmed", "node": node, "error": str(error),
                             "request_id": request_id}
            except ClonefleetError as error:
                return 422, {"result": "failed", "node": node, "error": str(error),
                             "request_id": request_id}
        return 200, {
            "result": "drained" if result.changed else "already-drained",
            "node": node, "state": result.state, "confirmed": list(result.confirmed),
            "unreachable": list(result.unreachable), "request_id": request_id,
        }


class _DeadlineReader(io.RawIOBase):
    """A connection's reading side that gives each read only the time left until `deadline`,
    so a client sending one byte now and then is cut off as surely as a silent one."""

    def __init__(self, connection: socket.socket, deadline: float) -> None:
        super().__init__()
        self.connection = connection
        self.deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request did not arrive in time")
        self.connection.settimeout(remaining)
        return self.connection.recv_into(buffer)


def _shown(text: str, limit: int = 80) -> str:
    """Client-supplied text made safe for one log line: escaped and cut short."""
    escaped = text[:limit].encode("unicode_escape").decode("ascii")
    return escaped + ("..." if len(text) > limit else "")


def _route_of(target: str) -> str:
    """The path part of a request target; the target itself when it does not parse (an
    unknown path then, answered 404)."""
    try:
        return urlsplit(target).path
    except ValueError:  # e.g. "//[x": an unterminated IPv6 host
        return target


def _described(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _handler(service: DrainService, registry: CollectorRegistry, requests: Counter,
             read_timeout: float, metrics_token: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "clonefleet-serve"
        sys_version = ""
        timeout = read_timeout  # set on the socket by StreamRequestHandler.setup
        # Not HTTP/0.9: an answer to a request line too garbled to name a version must still
        # carry a status line.
        default_request_version = "HTTP/1.0"

        def setup(self) -> None:
            deadline = time.monotonic() + read_timeout
            self.request.settimeout(read_timeout)
            if isinstance(self.request, ssl.SSLSocket):
                self.request.do_handshake()
            super().setup()
            self.rfile.close()  # replaced: a socket is only closed once its files are
            self._reader = _DeadlineReader(self.connection, deadline)
            self.rfile = io.BufferedReader(self._reader)

        def __getattr__(self, name: str) -> Callable[[], None]:
            # Every method, however odd, gets 404 or 405 from the routing below instead of
            # the standard library's 501: a client's mistake is a 4xx.
            if name.startswith("do_"):
                return self._dispatch
            raise AttributeError(name)

        def _dispatch(self) -> None:
            path = _route_of(self.path)
            allowed = ROUTES.get(path)
            if allowed is None:
                self._answer(404, {"result": "not-found"}, "no such path")
            elif self.command != allowed:
                self._answer(405, {"result": "method-not-allowed", "allow": allowed},
                             f"only {allowed} here", headers={"Allow": allowed})
            elif path == "/v1/drain":
                self._drain()
            elif path == "/v1/health":
                # Asked every few seconds by probes: not worth a line in the journal each time.
                self._answer(200, {"ok": True}, level=logging.DEBUG)
            else:
                self._metrics()

        def _bearer(self) -> str:
            authorization = self.headers.get("Authorization", "")
            scheme, _, value = authorization.partition(" ")
            return value.strip() if scheme.lower() == "bearer" else ""

        def _drain(self) -> None:
            caller = service.caller(self._bearer())
            if caller is None:
                self._answer(401, dict(UNAUTHORIZED), "no token, or one no node has",
                             headers={"WWW-Authenticate": "Bearer"})
                self._discard_body()
                return
            length = self._content_length()
            if length is None:
                return
            body = self._read_body(length)
            if body is None:
                return
            try:
                status, data = service.drain_for(caller, body)
            except Exception:  # a bug must not kill the server; the agent will retry
                log.exception("drain request from %s failed", caller)
                status, data = 500, {"result": "error"}
            note = " ".join(str(data[key]) for key in ("result", "node") if key in data)
            detail = data.get("error") or data.get("reason")
            # A drain or a refusal is news for the operator even though nothing went wrong
            # with the request.
            level = {200: logging.WARNING, 409: logging.ERROR, 422: logging.ERROR}.get(status)
            self._answer(status, data, f"{note}: {detail}" if detail else note, level=level)

        def _content_length(self) -> int | None:
            """The body's declared length, or None once the request has been answered."""
            values = self.headers.get_all("Content-Length") or []
            if self.headers.get("Transfer-Encoding") or not values:
                self._answer(411, {"result": "length-required",
                                   "error": "send the body with a Content-Length"},
                             "no Content-Length")
                return None
            if len(set(values)) > 1 or not BYTE_COUNT.fullmatch(values[0].strip()):
                shown = _shown(", ".join(values))
                self._answer(400, {"result": "bad-request",
                                   "error": "Content-Length is not a byte count"},
                             f"Content-Length {shown!r} is not a byte count")
                return None
            length = int(values[0])
            if length > MAX_BODY:
                self._answer(413, {"result": "too-large",
                                   "error": f"a body may have {MAX_BODY} bytes at most"},
                             f"body of {length} bytes, more than {MAX_BODY}")
                self._discard_body()
                return None
            return length

        def _read_body(self, length: int) -> bytes | None:
            """The whole body, or None once the request has been answered or abandoned."""
            try:
                body = self.rfile.read(length)
            except TimeoutError:
                self._answer(408, {"result": "timeout"},
                             f"body not received within {read_timeout:g} s")
                return None
            if len(body) < length:
                self.close_connection = True
                log.warning("%s %s %s: client closed the connection after %d of %d body bytes",
                            self.address_string(), _shown(self.command, 20), _shown(self.path),
                            len(body), length)
                return None
            return body

        def _discard_body(self) -> None:
            """After an early answer: end it for the client, then drop the body it may still
            be sending (see DISCARD_LIMIT)."""
            values = self.headers.get_all("Content-Length") or []
            if len(values) != 1 or not BYTE_COUNT.fullmatch(values[0].strip()):
                return
            remaining = min(int(values[0]), DISCARD_LIMIT)
            self._reader.deadline = min(self._reader.deadline,
                                        time.monotonic() + DISCARD_SECONDS)
            try:
                # The client sees the answer end now rather than when the dropping is over;
                # for TLS this ends the session too, and the rest is dropped unread as bytes.
                self.connection.shutdown(socket.SHUT_WR)
                while remaining > 0:
                    chunk = self.rfile.read1(min(remaining, 65536))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            except OSError:
                pass  # the client is gone or too slow: the answer was sent, close anyway

        def _metrics(self) -> None:
            if metrics_token and not hmac.compare_digest(self._bearer().encode(),
                                                         metrics_token.encode()):
                self._answer(401, dict(UNAUTHORIZED), "metrics need the metrics token",
                             headers={"WWW-Authenticate": "Bearer"})
                return
            try:
                payload = generate_latest(registry)
            except Exception:
                log.exception("metrics could not be collected")
                self._answer(500, {"result": "error"})
                return
            self._send(200, payload, CONTENT_TYPE_LATEST, level=logging.DEBUG)  # every scrape

        def _answer(self, status: int, data: dict[str, Any], note: str = "", *,
                    headers: dict[str, str] | None = None, level: int | None = None) -> None:
            payload = json.dumps(data, sort_keys=True).encode()
            self._send(status, payload, "application/json", note, headers, level=level)

        def _send(self, status: int, payload: bytes, content_type: str, note: str = "",
                  headers: dict[str, str] | None = None, *, level: int | None = None) -> None:
            # Either may be unset when the request line itself was unreadable.
            raw_path = getattr(self, "path", "") or ""
            command = self.command or "-"
            path = _route_of(raw_path)
            requests.labels(path if path in ROUTES else "other", str(status)).inc()
            if level is None:
                level = (logging.INFO if status < 400 else
                         logging.WARNING if status < 500 else logging.ERROR)
            log.log(level, "%s %s %s %d%s", self.address_string(), _shown(command, 20),
                    _shown(raw_path) or "-", status, f" {note}" if note else "")
            # The reads may have left the socket with a sliver of the deadline.
            self.connection.settimeout(read_timeout)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def send_error(self, code: int, message: str | None = None,
                       explain: str | None = None) -> None:
            # The standard library's own refusals (a malformed request line or headers),
            # answered in JSON and logged in one line like every other answer.
            self.close_connection = True
            text = _shown(message or HTTPStatus(code).phrase, 120)
            # Its one 5xx, 505 for an HTTP version other than 1.x, is the client's doing too;
            # a 5xx would read as a fault of the server in the request counter.
            self._answer(400 if code >= 500 else code,
                         {"result": "bad-request", "error": text}, text)

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass  # _send logs every answer itself, with the reason for it

        def log_error(self, format: str, *args: Any) -> None:
            # Only for a request that did not arrive in time; send_error logs through _send.
            log.warning("%s %s", self.address_string(), format % args)

    return Handler


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` at once: a flood of connections
    (each may hold its thread up to the read timeout) is refused at accept, with a 503 on
    plain HTTP (a TLS connection is only closed: no handshake was made to answer in), and
    costs one log line per burst rather than a thread each."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 max_connections: int) -> None:
        super().__init__(address, handler)
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._refused = 0
        self._refused_lock = threading.Lock()
        self.tls = False

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request, client_address)
            return
        with self._refused_lock:
            refused, self._refused = self._refused, 0
        if refused > 1:
            log.warning("refused %d connections in all while at the limit of %d", refused,
                        self.max_connections)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread was started to release it
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            # A reset, a broken pipe, a timeout, a failed TLS handshake: the client's doing,
            # worth one line and no traceback.
            log.warning("%s connection dropped: %s", client_address[0], _described(error))
        else:
            log.error("request from %s failed", client_address[0], exc_info=True)

    def _refuse(self, request: Any, client_address: Any) -> None:
        with self._refused_lock:
            self._refused += 1
            first = self._refused == 1
        if first:
            log.warning("%s refused: %d connections in progress already (the most this serve "
                        "takes at once); refusing more until one ends", client_address[0],
                        self.max_connections)
        if not self.tls:
            try:
                request.settimeout(0.5)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
                                b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
        self.shutdown_request(request)

def make_server(service: DrainService, host: str = "127.0.0.1", port: int = 8441, *,
                tls_cert: str = "", tls_key: str = "", read_timeout: float = READ_TIMEOUT,
                metrics_token: str = "",
                max_connections: int = MAX_CONNECTIONS) -> ThreadingHTTPServer:
    """An HTTP server for `service` and the fleet's metrics (HTTPS when a certificate and key
    are given); port 0 picks a free port (`server.server_address[1]`). A request must arrive
    whole within `read_timeout` seconds; with `metrics_token`, `/metrics` needs it as bearer.
    At most `max_connections` are served at once; more are refused (see `_Server`)."""
    if not read_timeout > 0:
        raise ConfigError(f"read timeout {read_timeout!r} must be a positive number of seconds")
    if max_connections < 1:
        raise ConfigError(f"max connections {max_connections!r} must be at least 1")
    registry = metrics_registry(service.fleet, service.store)
    requests = Counter("clonefleet_serve_requests", "Requests this serve process answered, "
                       "by path (or 'other') and HTTP status.", ["path", "code"],
                       registry=registry)
    server = _Server((host, port), _handler(service, registry, requests, read_timeout,
                                            metrics_token), max_connections)
    if tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_cert, tls_key or None)
        # The handshake happens in the connection's own thread (Handler.setup), under the
        # read timeout, not in accept().
        server.socket = context.wrap_socket(server.socket, server_side=True,
                                            do_handshake_on_connect=False)
        server.tls = True
    return server
