"""The drain endpoint: HTTP(S) with the standard library, one JSON request per drain.

    POST /v1/drain
    Authorization: Bearer <node token>
    {"node": "fsn-1", "request_id": "...", "reason": "...", "findings": [...]}

    200 {"result": "drained" | "already-drained", "node", "state", "confirmed", "unreachable"}
    400 {"result": "bad-request", "error"}       malformed JSON or fields
    401 {"result": "unauthorized"}               no token, a token no node has, or a node's
                                                 token naming another node; judged before the
                                                 body, so it wins over any 400
    409 {"result": "refused", "reason"}          DrainRefused: it would empty a region (or the
                                                 node is not active); the agent pages loudly
    422 {"result": "failed", "error"}            another clonefleet error the operator must fix
    503 {"result": "not-confirmed", "error"}     recorded, but a DNS server still serves the node:
                                                 the agent retries, which republishes
    GET /v1/health → 200 {"ok": true}

Run it behind the WireGuard mesh, or with --tls-cert/--tls-key: the token is a bearer secret.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from clonefleet.dnsmap import DrainRefused, DrainResult, drain_node
from clonefleet.dnsmap.errors import DrainNotConfirmed
from clonefleet.errors import ClonefleetError
from clonefleet.inventory import Fleet
from clonefleet.serve.tokens import token_owner
from clonefleet.state import StateStore

log = logging.getLogger("clonefleet.serve")

MAX_BODY = 64 * 1024
MAX_REASON = 2000
LAST_REQUEST_FACT = "drain_last_request"
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
            log.warning("drain request rejected: no token, or one no node has")
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
            log.warning("drain request for %r rejected: it came with %s's token", node, caller)
            return 401, dict(UNAUTHORIZED)
        if not isinstance(reason, str) or not reason.strip():
            return 400, {"result": "bad-request", "error": "'reason' must be a non-empty text"}
        reason = " ".join(reason.split())[:MAX_REASON]
        self.store.set_fact(node, LAST_REQUEST_FACT,
                            {"request_id": request_id, "reason": reason})
        with self._lock:
            try:
                result = self.drain(self.fleet, self.store, node,
                                    reason=f"smartwatch: {reason}", actor=f"smartwatch@{node}",
                                    timeout=self.timeout)
            except DrainRefused as error:
                log.error("drain of %s refused: %s", node, error)
                return 409, {"result": "refused", "node": node, "reason": str(error),
                             "request_id": request_id}
            except DrainNotConfirmed as error:
                return 503, {"result": "not-confirmed", "node": node, "error": str(error),
                             "request_id": request_id}
            except ClonefleetError as error:
                return 422, {"result": "failed", "node": node, "error": str(error),
                             "request_id": request_id}
        log.warning("drained %s for smartwatch: %s", node, reason)
        return 200, {
            "result": "drained" if result.changed else "already-drained",
            "node": node, "state": result.state, "confirmed": list(result.confirmed),
            "unreachable": list(result.unreachable), "request_id": request_id,
        }


def _handler(service: DrainService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "clonefleet-serve"
        sys_version = ""

        def _answer(self, status: int, data: dict[str, Any]) -> None:
            payload = json.dumps(data, sort_keys=True).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            if self.path == "/v1/health":
                self._answer(200, {"ok": True})
            else:
                self._answer(404, {"result": "not-found"})

        def do_POST(self) -> None:
            if self.path != "/v1/drain":
                self._answer(404, {"result": "not-found"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"result": "too-large"})
                return
            body = self.rfile.read(length)
            authorization = self.headers.get("Authorization", "")
            token = authorization[7:].strip() if authorization.startswith("Bearer ") else ""
            try:
                status, data = service.handle_drain(token, body)
            except Exception:  # a bug must not kill the server; the agent will retry
                log.exception("drain request failed")
                status, data = 500, {"result": "error"}
            self._answer(status, data)

        def log_message(self, format: str, *args: Any) -> None:
            log.info("%s %s", self.address_string(), format % args)

    return Handler


def make_server(service: DrainService, host: str = "127.0.0.1", port: int = 8441, *,
                tls_cert: str = "", tls_key: str = "") -> ThreadingHTTPServer:
    """An HTTP server for `service` (HTTPS when a certificate and key are given); port 0
    picks a free port (`server.server_address[1]`)."""
    server = ThreadingHTTPServer((host, port), _handler(service))
    server.daemon_threads = True
    if tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_cert, tls_key or None)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    return server
