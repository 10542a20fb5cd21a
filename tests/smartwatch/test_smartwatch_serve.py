"""The control plane's side of the drain protocol, without a network: tokens and answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fleet_text import FSN, FleetNode, fleet_toml

from clonefleet.cli import _register, cli
from clonefleet.dnsmap import DrainRefused, DrainResult
from clonefleet.dnsmap.errors import DrainNotConfirmed
from clonefleet.errors import StateError, UnknownNodeError
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.serve import TOKEN_FACT, DrainService, issue_token, token_owner, verify_token
from clonefleet.state import SqliteStateStore

pytestmark = pytest.mark.unit

FLEET = fleet_toml("servetest", "servetest.clonefleet.test", [FSN],
                   [FleetNode("fsn-1", "fsn", "A"), FleetNode("fsn-2", "fsn", "B")])


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    path = tmp_path / "servetest.toml"
    path.write_text(FLEET)
    return load_fleet(path)


@pytest.fixture
def store(tmp_path: Path) -> SqliteStateStore:
    return SqliteStateStore(tmp_path / "state.sqlite")


class StubDrain:
    """Stands in for `drain_node`: records calls, answers or raises as told."""

    def __init__(self, outcome: Any = None) -> None:
        self.outcome = outcome
        self.calls: list[dict[str, Any]] = []

    def __call__(self, fleet: Fleet, store: SqliteStateStore, node: str,
                 **options: Any) -> DrainResult:
        self.calls.append({"node": node, **options})
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return DrainResult(node=node, state="draining", confirmed=["fsn-1", "fsn-2"],
                           changed=self.outcome != "unchanged")


def request(node: str = "fsn-1", reason: str = "disk failing") -> bytes:
    return json.dumps({"node": node, "reason": reason, "request_id": "r-1"}).encode()


def test_issued_token_is_stored_only_as_a_hash_and_verifies(fleet, store) -> None:
    token = issue_token(fleet, store, "fsn-1")
    assert token not in json.dumps(store.facts("fsn-1"))
    assert len(store.get_fact("fsn-1", TOKEN_FACT)) == 64
    assert verify_token(store, "fsn-1", token)
    assert not verify_token(store, "fsn-1", token + "x")
    assert not verify_token(store, "fsn-2", token)


def test_issuing_again_revokes_the_previous_token(fleet, store) -> None:
    first = issue_token(fleet, store, "fsn-1")
    second = issue_token(fleet, store, "fsn-1")
    assert not verify_token(store, "fsn-1", first)
    assert verify_token(store, "fsn-1", second)


def test_token_for_unknown_node_is_refused(fleet, store) -> None:
    with pytest.raises(UnknownNodeError):
        issue_token(fleet, store, "nope-1")


def test_valid_request_drains_with_smartwatch_as_actor(fleet, store) -> None:
    drain = StubDrain()
    service = DrainService(fleet, store, drain=drain, timeout=5)
    status, body = service.handle_drain(issue_token(fleet, store, "fsn-1"), request())
    assert (status, body["result"], body["state"]) == (200, "drained", "draining")
    assert drain.calls == [{"node": "fsn-1", "reason": "smartwatch: disk failing",
                            "actor": "smartwatch@fsn-1", "timeout": 5}]


def test_repeated_request_for_a_drained_node_is_acknowledged_as_already_drained(
        fleet, store) -> None:
    service = DrainService(fleet, store, drain=StubDrain("unchanged"))
    status, body = service.handle_drain(issue_token(fleet, store, "fsn-1"), request())
    assert (status, body["result"]) == (200, "already-drained")


@pytest.mark.parametrize("token_for", ["fsn-2", None])
def test_wrong_or_missing_token_is_unauthorized_and_drains_nothing(
        fleet, store, token_for) -> None:
    drain = StubDrain()
    token = issue_token(fleet, store, token_for) if token_for else ""
    status, body = DrainService(fleet, store, drain=drain).handle_drain(token, request())
    assert (status, body) == (401, {"result": "unauthorized"})
    assert drain.calls == []


def test_unknown_node_looks_like_a_bad_token(fleet, store) -> None:
    service = DrainService(fleet, store, drain=StubDrain())
    status, _ = service.handle_drain("anything", request(node="ghost-1"))
    assert status == 401


MALFORMED = [b"not json", b"[]", json.dumps({"reason": "x"}).encode()]


@pytest.mark.parametrize("body", MALFORMED)
def test_malformed_request_with_a_valid_token_is_a_bad_request(fleet, store, body) -> None:
    drain = StubDrain()
    service = DrainService(fleet, store, drain=drain)
    status, answer = service.handle_drain(issue_token(fleet, store, "fsn-1"), body)
    assert (status, answer["result"]) == (400, "bad-request")
    assert drain.calls == []


@pytest.mark.parametrize("body", MALFORMED)
def test_malformed_request_with_a_bad_token_is_unauthorized_not_a_bad_request(
        fleet, store, body) -> None:
    issue_token(fleet, store, "fsn-1")
    status, answer = DrainService(fleet, store, drain=StubDrain()).handle_drain("t", body)
    assert (status, answer) == (401, {"result": "unauthorized"})


def test_a_nodes_token_cannot_drain_another_node_and_looks_like_a_bad_token(
        fleet, store) -> None:
    drain = StubDrain()
    service = DrainService(fleet, store, drain=drain)
    status, answer = service.handle_drain(issue_token(fleet, store, "fsn-2"),
                                          request(node="fsn-1"))
    assert (status, answer) == (401, {"result": "unauthorized"})
    assert drain.calls == []


def test_token_owner_names_the_node_whose_current_token_it_is(fleet, store) -> None:
    first = issue_token(fleet, store, "fsn-1")
    second = issue_token(fleet, store, "fsn-2")
    assert (token_owner(fleet, store, first), token_owner(fleet, store, second)) == \
        ("fsn-1", "fsn-2")
    assert token_owner(fleet, store, "") is None
    assert token_owner(fleet, store, first + "x") is None


def test_empty_reason_is_a_bad_request_even_with_a_good_token(fleet, store) -> None:
    service = DrainService(fleet, store, drain=StubDrain())
    status, _ = service.handle_drain(issue_token(fleet, store, "fsn-1"), request(reason=" "))
    assert status == 400


@pytest.mark.parametrize(("error", "status", "result"), [
    (DrainRefused("would leave region 'fsn' with 0 active nodes"), 409, "refused"),
    (DrainNotConfirmed("fsn-2 still serves it", DrainResult(node="fsn-1", state="draining")),
     503, "not-confirmed"),
    (StateError("node is retired"), 422, "failed"),
])
def test_drain_errors_map_to_distinct_statuses(fleet, store, error, status, result) -> None:
    service = DrainService(fleet, store, drain=StubDrain(error))
    answer_status, body = service.handle_drain(issue_token(fleet, store, "fsn-1"), request())
    assert (answer_status, body["result"]) == (status, result)


def test_token_issue_command_prints_the_token_once_and_stores_its_hash(
        fleet, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "state"))
    _register()
    result = CliRunner().invoke(cli, ["--fleet", str(fleet.path), "token", "issue", "fsn-1"])
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    stored = SqliteStateStore(tmp_path / "state" / "servetest" / "state.sqlite")
    assert verify_token(stored, "fsn-1", token)


def test_token_issue_for_unknown_node_is_one_line_error_with_exit_2(
        fleet, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "state"))
    _register()
    result = CliRunner().invoke(cli, ["--fleet", str(fleet.path), "token", "issue", "ghost"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("error: unknown node")


@pytest.mark.parametrize("arguments", [["--listen", "localhost"], ["--listen", "127.0.0.1:x"],
                                       ["--tls-key", "key.pem"], ["--read-timeout", "0"],
                                       ["--read-timeout", "-1"],
                                       ["--metrics-token-file", "no-such-file"]])
def test_serve_with_bad_options_is_one_line_error_with_exit_2(
        fleet, tmp_path, monkeypatch, arguments) -> None:
    monkeypatch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "state"))
    _register()
    result = CliRunner().invoke(cli, ["--fleet", str(fleet.path), "serve", *arguments])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")
