"""One hung PowerDNS (SIGSTOP) among several: it costs its deadline once, is named, and never
delays the others' confirmation or a second drain; and endpoints given by host name."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from pdns_fixture import DnsLab, PowerDnsServer

from clonefleet.cli import _register, cli
from clonefleet.dnsmap import ENDPOINT_FACT, DrainResult, drain_node, publish, verify
from clonefleet.dnsmap.powerdns import ask
from clonefleet.state import SqliteStateStore

pytestmark = pytest.mark.integration

EDGE = "edge.dnslab.clonefleet.test."
SERVER_TIMEOUT = 1.0
# A healthy server on loopback confirms in tens of milliseconds; this leaves room for a
# loaded 2-core machine while staying far below the hung server's deadline.
NORMAL = 0.6
_register()


@pytest.fixture
def stopped(dns_lab: DnsLab) -> Iterator[PowerDnsServer]:
    """sin-1's PowerDNS, published to and then frozen with SIGSTOP; always resumed after."""
    publish(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, actor="test")
    server = dns_lab.servers["sin-1"]
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield server
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def test_a_stopped_server_is_named_and_the_others_confirm_in_normal_time(
        dns_lab: DnsLab, stopped: PowerDnsServer) -> None:
    result = drain_node(dns_lab.fleet, dns_lab.store, "fsn-1", reason="upgrade", actor="test",
                        endpoints=dns_lab.endpoints, timeout=20,
                        server_timeout=SERVER_TIMEOUT)
    assert result.unreachable == ["sin-1"]
    assert "no answer in time" in result.errors["sin-1"]
    assert result.confirmed == ["ash-1", "ash-2", "fsn-1", "fsn-2"]
    assert max(result.confirmed_after.values()) < NORMAL, result.confirmed_after
    assert result.seconds < NORMAL
    # The hung server cost its deadline once: not once per call, not the 20 s timeout.
    assert SERVER_TIMEOUT <= result.elapsed < SERVER_TIMEOUT + NORMAL
    for name in ("ash-1", "ash-2", "fsn-2"):
        got = ask(dns_lab.servers[name].endpoint, EDGE, "A", client="0.0.0.0/0").addresses
        assert got and dns_lab.fleet.nodes["fsn-1"].ipv4 not in got
    records = {record.node: record for record in dns_lab.store.dns_servers()}
    assert not records["sin-1"].ok and records["fsn-2"].serial == result.serial


def test_a_second_drain_is_not_held_up_by_the_first_one_waiting_on_a_stopped_server(
        dns_lab: DnsLab, stopped: PowerDnsServer) -> None:
    first: list[DrainResult] = []

    def drain_first() -> None:
        store = SqliteStateStore(dns_lab.store.path)  # its own connection, as another process
        try:
            first.append(drain_node(dns_lab.fleet, store, "fsn-1", reason="one", actor="a",
                                    endpoints=dns_lab.endpoints, timeout=20,
                                    server_timeout=SERVER_TIMEOUT))
        finally:
            store.close()

    thread = threading.Thread(target=drain_first)
    thread.start()
    try:
        time.sleep(0.3)  # the first drain is now waiting on sin-1
        started = time.monotonic()
        second = drain_node(dns_lab.fleet, dns_lab.store, "ash-1", reason="two", actor="b",
                            endpoints=dns_lab.endpoints, timeout=20,
                            server_timeout=SERVER_TIMEOUT)
        took = time.monotonic() - started
    finally:
        thread.join(timeout=30)
    assert second.confirmed == ["ash-1", "ash-2", "fsn-1", "fsn-2"]
    assert max(second.confirmed_after.values()) < NORMAL, second.confirmed_after
    assert second.unreachable == ["sin-1"]
    # sin-1's push waits for the first drain's push to it, within its own deadline only.
    assert took < SERVER_TIMEOUT + NORMAL
    assert first and first[0].unreachable == ["sin-1"]
    # Both drains are on every server that answers: the second map includes the first.
    for name in ("ash-2", "fsn-2"):
        got = ask(dns_lab.servers[name].endpoint, EDGE, "A", client="0.0.0.0/0").addresses
        assert got and not got & {dns_lab.fleet.nodes[node].ipv4 for node in ("fsn-1", "ash-1")}


def test_verify_names_a_stopped_server_unreachable_after_its_deadline_once(
        dns_lab: DnsLab, stopped: PowerDnsServer) -> None:
    started = time.monotonic()
    result = verify(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, timeout=SERVER_TIMEOUT)
    took = time.monotonic() - started
    assert list(result.unreachable) == ["sin-1"] and result.disagreements == []
    assert sorted(result.checked) == ["ash-1", "ash-2", "fsn-1", "fsn-2"]
    assert took < SERVER_TIMEOUT + 2 * NORMAL


def run_cli(lab: DnsLab, *arguments: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--fleet", str(lab.fleet.path), *arguments],
                                env={"CLONEFLEET_STATE_DIR": str(lab.state_root),
                                     "CLONEFLEET_ACTOR": "test"})
    return result.exit_code, result.stdout, result.stderr


def test_endpoints_with_a_host_name_work_for_publish_verify_and_drain(dns_lab: DnsLab) -> None:
    for name, server in dns_lab.servers.items():
        dns_lab.store.set_fact(name, ENDPOINT_FACT,
                               dict(server.endpoint.as_fact(), dns_host="localhost"))
    assert run_cli(dns_lab, "dns", "publish")[0] == 0
    code, out, err = run_cli(dns_lab, "dns", "verify")
    assert (code, err) == (0, ""), out
    code, out, err = run_cli(dns_lab, "drain", "fsn-2", "--reason", "by name")
    assert (code, err) == (0, ""), out
    assert "confirmed by 5 server(s)" in out


def test_an_unresolvable_dns_host_is_refused_before_the_state_changes(
        dns_lab: DnsLab) -> None:
    fact = dict(dns_lab.servers["ash-2"].endpoint.as_fact(), dns_host="no-such-host.invalid")
    dns_lab.store.set_fact("ash-2", ENDPOINT_FACT, fact)
    code, _out, err = run_cli(dns_lab, "drain", "fsn-2", "--reason", "x")
    assert code == 25
    assert err.startswith("error: node 'ash-2': dns_endpoint.dns_host 'no-such-host.invalid' "
                          "does not resolve")
    assert err.count("\n") == 1
    record = dns_lab.store.get("fsn-2")
    assert record is not None and record.state == "active"


def test_cli_drain_with_a_stopped_server_exits_22_with_one_json_document(
        dns_lab: DnsLab, stopped: PowerDnsServer) -> None:
    code, out, err = run_cli(dns_lab, "--json", "drain", "fsn-2", "--reason", "json",
                             "--server-timeout", str(SERVER_TIMEOUT))
    assert code == 22
    document = json.loads(out)  # one document: the result with the error added
    assert document["unreachable"] == ["sin-1"] and document["exit_code"] == 22
    assert document["kind"] == "DnsUnreachable" and "sin-1" in document["error"]
    assert sorted(document["confirmed"]) == ["ash-1", "ash-2", "fsn-1", "fsn-2"]
    assert err.startswith("error: drain of 'fsn-2' recorded") and err.count("\n") == 1
