"""`clonefleet serve` against clients that get HTTP wrong, spoken to with raw bytes on loopback:
every fault of a client is a 4xx answer or a closed connection, the caller is judged before the
body, no client holds a worker longer than the read timeout, and each problem is one log line
with no traceback.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from serve_fixture import (
    SERVE_FLEET,
    ProcessServe,
    StubDrain,
    ThreadServe,
    bearer,
    exchange,
    make_store,
    parse_answer,
    raw_request,
    read_until_closed,
    serve_lines,
    start_thread_serve,
    wait_for,
)

from clonefleet.inventory import Fleet, load_fleet
from clonefleet.serve import DrainService, issue_token
from clonefleet.serve.server import DISCARD_SECONDS, MAX_BODY
from clonefleet.state import SqliteStateStore

pytestmark = pytest.mark.integration

READ_TIMEOUT = 1.0
GOOD_BODY = json.dumps({"node": "fsn-1", "reason": "disk failing", "request_id": "r-1"}).encode()


class Lab:
    def __init__(self, tmp_path: Path) -> None:
        (tmp_path / "servelab.toml").write_text(SERVE_FLEET)
        self.fleet: Fleet = load_fleet(tmp_path / "servelab.toml")
        self.state_root = tmp_path / "state"
        self.store: SqliteStateStore = make_store(tmp_path, self.fleet)
        self.token = issue_token(self.fleet, self.store, "fsn-1")
        self.servers: list[ThreadServe] = []

    def serve(self, drain: StubDrain | None = None, read_timeout: float = READ_TIMEOUT,
              **options: int) -> ThreadServe:
        service = DrainService(self.fleet, self.store, drain=drain or StubDrain())
        running = start_thread_serve(service, read_timeout=read_timeout, **options)
        self.servers.append(running)
        return running


@pytest.fixture
def lab(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[Lab]:
    caplog.set_level(logging.INFO, logger="clonefleet.serve")
    made = Lab(tmp_path)
    yield made
    for running in made.servers:
        running.stop()
    made.store.close()


def no_traceback(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    """Neither the log nor anything printed to stderr (socketserver prints tracebacks there)
    carries a traceback."""
    assert "Traceback" not in caplog.text
    assert "Traceback" not in capfd.readouterr().err


def one_problem_line(caplog: pytest.LogCaptureFixture, *fragments: str) -> str:
    wait_for(lambda: len(serve_lines(caplog)) >= 1, "serve's log line")
    lines = serve_lines(caplog)
    assert len(lines) == 1, lines
    assert all(fragment in lines[0] for fragment in fragments), lines[0]
    return lines[0]


def closed_by_server(connection: socket.socket) -> bool:
    """True when the server closed without answering: an end of stream, or a reset when
    bytes it never read were still on their way (the kernel then resets, not ends)."""
    try:
        return read_until_closed(connection) == b""
    except ConnectionResetError:
        return True


def reset(connection: socket.socket) -> None:
    """Close with a TCP reset instead of a goodbye, as a crashed or impatient client does."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic Zm9vOmJhcg==",
                                           "Bearer "])
@pytest.mark.parametrize("body", [b"{not json", b'{"node": 7}'])
def test_drain_without_a_valid_token_is_401_even_when_the_body_is_malformed(
        lab, caplog, capfd, authorization, body) -> None:
    drain = StubDrain()
    running = lab.serve(drain)
    headers = {"Authorization": authorization} if authorization else {}
    answer = exchange(running.port, raw_request("POST", "/v1/drain", body, headers=headers))
    assert (answer.status, json.loads(answer.body)) == (401, {"result": "unauthorized"})
    assert answer.headers["www-authenticate"] == "Bearer"
    assert drain.calls == []
    one_problem_line(caplog, "POST /v1/drain 401")
    no_traceback(caplog, capfd)


def test_drain_without_a_token_is_401_even_with_a_content_length_that_is_no_number(
        lab, caplog, capfd) -> None:
    running = lab.serve()
    answer = exchange(running.port, raw_request("POST", "/v1/drain", b"{}", length="abc"))
    assert answer.status == 401
    one_problem_line(caplog, "401")
    no_traceback(caplog, capfd)


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"reason": "x"}'])
def test_drain_with_a_valid_token_and_a_malformed_body_is_400(
        lab, caplog, capfd, body) -> None:
    drain = StubDrain()
    running = lab.serve(drain)
    answer = exchange(running.port,
                      raw_request("POST", "/v1/drain", body, headers=bearer(lab.token)))
    assert (answer.status, json.loads(answer.body)["result"]) == (400, "bad-request")
    assert drain.calls == []
    one_problem_line(caplog, "POST /v1/drain 400 bad-request")
    no_traceback(caplog, capfd)


@pytest.mark.parametrize("length", ["abc", "-5", "1e3", "0x10", " ", "\xb2", "12, 12"])
def test_content_length_that_is_not_a_byte_count_is_400(lab, caplog, capfd, length) -> None:
    running = lab.serve()
    answer = exchange(running.port, raw_request("POST", "/v1/drain", GOOD_BODY,
                                                headers=bearer(lab.token), length=length))
    assert (answer.status, json.loads(answer.body)["result"]) == (400, "bad-request")
    one_problem_line(caplog, "400", "is not a byte count")
    no_traceback(caplog, capfd)


def test_two_different_content_lengths_are_400(lab, caplog, capfd) -> None:
    running = lab.serve()
    data = raw_request("POST", "/v1/drain", GOOD_BODY,
                       headers={**bearer(lab.token), "Content-Length": "3"})
    answer = exchange(running.port, data)
    assert answer.status == 400
    one_problem_line(caplog, "400")
    no_traceback(caplog, capfd)


@pytest.mark.parametrize("headers", [{}, {"Transfer-Encoding": "chunked"}])
def test_drain_without_content_length_is_411(lab, caplog, capfd, headers) -> None:
    running = lab.serve()
    body = b"5\r\nhello\r\n0\r\n\r\n" if headers else b""
    answer = exchange(running.port, raw_request(
        "POST", "/v1/drain", body, headers={**bearer(lab.token), **headers}, length=""))
    assert (answer.status, json.loads(answer.body)["result"]) == (411, "length-required")
    one_problem_line(caplog, "411")
    no_traceback(caplog, capfd)


def test_body_over_the_limit_sent_whole_is_413_and_the_answer_arrives(
        lab, caplog, capfd) -> None:
    drain = StubDrain()
    running = lab.serve(drain)
    body = b"x" * (MAX_BODY + 1)
    answer = exchange(running.port,
                      raw_request("POST", "/v1/drain", body, headers=bearer(lab.token)))
    assert (answer.status, json.loads(answer.body)["result"]) == (413, "too-large")
    assert drain.calls == []
    one_problem_line(caplog, "413", f"body of {MAX_BODY + 1} bytes")
    no_traceback(caplog, capfd)


def test_huge_declared_body_is_413_at_once_without_waiting_for_it(lab, caplog, capfd) -> None:
    running = lab.serve()
    started = time.monotonic()
    answer = exchange(running.port, raw_request("POST", "/v1/drain", headers=bearer(lab.token),
                                                length=str(10**9)))
    assert answer.status == 413
    # The answer ends when sent (the server shuts its side), not after the discard time.
    assert time.monotonic() - started < DISCARD_SECONDS
    one_problem_line(caplog, "413")
    no_traceback(caplog, capfd)


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/nope", 404),
    ("POST", "/v1/nope", 404),
    ("POST", "/v1/health", 405),
    ("GET", "/v1/drain", 405),
    ("DELETE", "/v1/drain", 405),
    ("BREW", "/v1/health", 405),
    ("GET", "http://[oops/", 404),  # a target urlsplit cannot parse
])
def test_unknown_path_is_404_and_another_method_on_a_known_path_is_405(
        lab, caplog, capfd, method, path, status) -> None:
    running = lab.serve()
    answer = exchange(running.port, raw_request(method, path, headers=bearer(lab.token)))
    assert answer.status == status
    if status == 405:
        assert answer.headers["allow"] in ("GET", "POST")
    one_problem_line(caplog, f"{method} {path} {status}")
    no_traceback(caplog, capfd)


@pytest.mark.parametrize("data", [
    b"hello\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\r\n\r\n",  # a TLS hello sent to plain HTTP
    b"GET /v1/health HTTP/1.1\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n",
    b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
    b"GET /v1/health HTTP/2.0\r\n\r\n",
    b"GET /v1/health HTTP/1.x\r\n\r\n",
], ids=["one-word", "tls-hello", "header-too-long", "path-too-long", "http-2", "bad-version"])
def test_garbage_instead_of_a_request_is_a_4xx(lab, caplog, capfd, data) -> None:
    running = lab.serve()
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as connection:
        connection.sendall(data)
        received = read_until_closed(connection)
    answer = parse_answer(received)
    assert 400 <= answer.status < 500
    assert json.loads(answer.body)["result"] == "bad-request"
    one_problem_line(caplog)
    no_traceback(caplog, capfd)


def test_client_stalled_in_its_headers_is_cut_off_after_the_read_timeout_while_others_are_served(
        lab, caplog, capfd) -> None:
    read_timeout = 2.0
    running = lab.serve(read_timeout=read_timeout)
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as stalled:
        stalled.sendall(b"POST /v1/drain HTTP/1.1\r\nContent-Le")
        started = time.monotonic()
        answer = exchange(running.port, raw_request("GET", "/v1/health"))
        assert (answer.status, json.loads(answer.body)) == (200, {"ok": True})
        # Answered while the stalled client was still connected, not after it was cut off.
        stalled.setblocking(False)
        with pytest.raises(BlockingIOError):
            stalled.recv(1)
        stalled.settimeout(10)
        assert read_until_closed(stalled) == b""
        waited = time.monotonic() - started
    assert read_timeout - 0.5 <= waited < read_timeout + 5
    one_problem_line(caplog, "timed out")
    no_traceback(caplog, capfd)


def test_client_stalled_in_its_body_gets_408_after_the_read_timeout(lab, caplog, capfd) -> None:
    drain = StubDrain()
    running = lab.serve(drain)
    head = raw_request("POST", "/v1/drain", GOOD_BODY, headers=bearer(lab.token))
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as stalled:
        stalled.sendall(head[:-10])
        started = time.monotonic()
        answer = parse_answer(read_until_closed(stalled))
        waited = time.monotonic() - started
    assert (answer.status, json.loads(answer.body)) == (408, {"result": "timeout"})
    assert READ_TIMEOUT - 0.5 <= waited < READ_TIMEOUT + 5
    assert drain.calls == []
    one_problem_line(caplog, "408", "body not received within 1 s")
    no_traceback(caplog, capfd)


def test_client_trickling_its_headers_is_cut_off_at_the_read_timeout(
        lab, caplog, capfd) -> None:
    running = lab.serve()
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as trickling:
        started = time.monotonic()
        trickling.sendall(b"GET /v1/health HTTP/1.1\r\n")
        closed = threading.Event()

        def trickle() -> None:
            # One header byte per 0.2 s: each read is quick, the request never completes.
            while not closed.is_set():
                try:
                    trickling.sendall(b"X")
                except OSError:
                    return
                closed.wait(0.2)

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            assert closed_by_server(trickling)
        finally:
            closed.set()
            sender.join(timeout=10)
        waited = time.monotonic() - started
    assert waited < READ_TIMEOUT + 5
    one_problem_line(caplog, "timed out")
    no_traceback(caplog, capfd)


def test_client_that_resets_before_the_answer_costs_one_line_and_no_traceback(
        lab, caplog, capfd) -> None:
    gate = threading.Event()
    drain = StubDrain(gate)
    running = lab.serve(drain)
    connection = socket.create_connection(("127.0.0.1", running.port), timeout=10)
    connection.sendall(raw_request("POST", "/v1/drain", GOOD_BODY, headers=bearer(lab.token)))
    assert drain.entered.wait(10)
    reset(connection)
    gate.set()  # the answer is now written to a connection the client has reset

    def dropped() -> list[str]:
        return [line for line in serve_lines(caplog) if "connection dropped" in line]

    wait_for(lambda: bool(dropped()), "the dropped connection's log line")
    [line] = dropped()
    assert "ConnectionResetError" in line or "BrokenPipeError" in line
    no_traceback(caplog, capfd)


def test_client_that_closes_in_the_middle_of_its_body_drains_nothing_and_costs_one_line(
        lab, caplog, capfd) -> None:
    drain = StubDrain()
    running = lab.serve(drain)
    data = raw_request("POST", "/v1/drain", GOOD_BODY, headers=bearer(lab.token))
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as connection:
        connection.sendall(data[:-20])
        connection.shutdown(socket.SHUT_WR)
        assert read_until_closed(connection) == b""
    one_problem_line(caplog, f"after {len(GOOD_BODY) - 20} of {len(GOOD_BODY)} body bytes")
    assert drain.calls == []
    no_traceback(caplog, capfd)


def test_connection_closed_without_a_request_logs_nothing(lab, caplog, capfd) -> None:
    running = lab.serve()
    socket.create_connection(("127.0.0.1", running.port), timeout=10).close()
    # A later request's line shows the first connection has been handled by then.
    assert exchange(running.port, raw_request("GET", "/nope")).status == 404
    one_problem_line(caplog, "GET /nope 404")
    no_traceback(caplog, capfd)


def test_valid_drain_request_is_still_answered_200_with_one_line(lab, caplog, capfd) -> None:
    drain = StubDrain()
    running = lab.serve(drain)
    answer = exchange(running.port,
                      raw_request("POST", "/v1/drain", GOOD_BODY, headers=bearer(lab.token)))
    assert (answer.status, json.loads(answer.body)["result"]) == (200, "drained")
    assert drain.calls == ["fsn-1"]
    one_problem_line(caplog, "POST /v1/drain 200 drained fsn-1")
    no_traceback(caplog, capfd)


def test_serve_process_logs_each_client_fault_in_one_line_and_never_a_traceback(
        lab: Lab, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    process = ProcessServe(lab.fleet.path, lab.state_root, log, ["--read-timeout", "1"])
    process.start()
    try:
        port = process.port
        faults: list[tuple[Callable[[], object], str]] = [
            (lambda: exchange(port, raw_request("POST", "/v1/drain", b"{oops")),
             "POST /v1/drain 401"),
            (lambda: exchange(port, raw_request("POST", "/v1/drain", GOOD_BODY,
                                                headers=bearer(lab.token), length="-1")),
             "POST /v1/drain 400"),
            (lambda: exchange(port, raw_request("PUT", "/v1/drain")), "PUT /v1/drain 405"),
            (lambda: exchange(port, b"\x16\x03\x01garbage\r\n\r\n"), "400 Bad request"),
        ]
        for send, _ in faults:
            send()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
            stalled.sendall(b"GET /v1/hea")
            assert read_until_closed(stalled) == b""
        wait_for(lambda: "timed out" in log.read_text(), "the stalled client's line")
    finally:
        process.stop()
    text = log.read_text()
    assert "Traceback" not in text
    for _, fragment in [*faults, (None, "timed out")]:
        assert sum(fragment in line for line in text.splitlines()) == 1, (fragment, text)


def test_connections_beyond_the_limit_are_refused_at_once_and_served_again_after(
        lab: Lab, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    # A flood of idle connections must not cost a thread each: past the limit the server
    # answers 503 at accept, logs the burst once, and serves again as soon as one ends.
    running = lab.serve(read_timeout=1.5, max_connections=2)
    opened = time.monotonic()
    stalled = [socket.create_connection(("127.0.0.1", running.port), timeout=5)
               for _ in range(2)]
    refused = []
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", running.port), timeout=5) as connection:
            refused.append(parse_answer(read_until_closed(connection)))
    assert [answer.status for answer in refused] == [503, 503, 503]
    assert refused[0].headers["retry-after"] == "1"
    limit_lines = [line for line in serve_lines(caplog) if "refused" in line]
    assert len(limit_lines) == 1 and "2 connections in progress" in limit_lines[0]

    answer = None
    while time.monotonic() - opened < 10:
        try:
            answer = exchange(running.port, raw_request("GET", "/v1/health"))
        except ConnectionResetError:
            continue  # refused with our request unread: the kernel may reset, not end
        if answer.status == 200:
            break
        time.sleep(0.1)
    assert answer is not None and answer.status == 200
    # freed by the stalled connections' read timeout (1.5 s), not by anything they sent
    assert 1.4 < time.monotonic() - opened < 10
    wait_for(lambda: any("refused" in line and "in all" in line
                         for line in serve_lines(caplog)), "the burst's summary line")
    for connection in stalled:
        connection.close()
    no_traceback(caplog, capfd)
