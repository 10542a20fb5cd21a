"""`GET /metrics` of `clonefleet serve`, scraped over HTTP and read with prometheus_client's
own text parser: node states per region, drains by node and source, provisioning step
durations and the last DNS verify, all read from the state store at scrape time.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pdns_fixture import DnsLab
from serve_fixture import (
    ROOT,
    SERVE_FLEET,
    StubDrain,
    ThreadServe,
    bearer,
    exchange,
    make_store,
    raw_request,
    scrape,
    start_thread_serve,
    value,
)

from clonefleet.dnsmap import Endpoints, drain_node, publish, verify
from clonefleet.errors import ConfigError
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.serve import DrainService, issue_token, read_metrics_token
from clonefleet.state import LIFECYCLE, SqliteStateStore

pytestmark = pytest.mark.integration

DOCS = ROOT / "docs" / "metrics.md"


class Lab:
    def __init__(self, tmp_path: Path) -> None:
        (tmp_path / "servelab.toml").write_text(SERVE_FLEET)
        self.fleet: Fleet = load_fleet(tmp_path / "servelab.toml")
        self.store: SqliteStateStore = make_store(tmp_path, self.fleet)
        self.servers: list[ThreadServe] = []

    def serve(self, fleet: Fleet | None = None, store: SqliteStateStore | None = None,
              **options: object) -> ThreadServe:
        service = DrainService(fleet or self.fleet, store or self.store, drain=StubDrain())
        running = start_thread_serve(service, **options)
        self.servers.append(running)
        return running


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    made = Lab(tmp_path)
    yield made
    for running in made.servers:
        running.stop()
    made.store.close()


def documented_names() -> set[str]:
    """Metric names in the first column of docs/metrics.md's tables."""
    return set(re.findall(r"^\| `(clonefleet_[a-z_]+)`", DOCS.read_text(), re.MULTILINE))


def fleet_samples(families: dict[str, list]) -> dict[tuple[str, tuple], float]:
    """The clonefleet_* samples computed from the store (not serve's own request counter)."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for name, samples in families.items()
            if name.startswith("clonefleet_") and name != "clonefleet_serve_requests"
            for sample in samples}


def test_every_documented_metric_is_served_and_every_served_one_is_documented(lab) -> None:
    store = lab.store
    store.set_state("fsn-1", "active", actor="test")
    store.record_step("fsn-1", "install", "done", 300.0)
    serial = store.next_dns_serial("test")
    store.record_dns_server("fsn-1", serial, True)
    verify(lab.fleet, store, Endpoints({}))
    running = lab.serve()
    exchange(running.port, raw_request("GET", "/v1/health"))
    served = {re.sub(r"_(count|sum)$", "", sample.name)  # a summary is documented once
              for name, samples in scrape(running.port).items()
              if name.startswith("clonefleet_") for sample in samples
              if not sample.name.endswith("_created")}  # the library's counter start time
    assert served == documented_names()


def test_node_states_are_counted_per_region_with_every_state_present(lab) -> None:
    for node in ("fsn-1", "fsn-2", "hel-1"):
        lab.store.set_state(node, "active", actor="test")
    lab.store.set_state("fsn-2", "locked", actor="test")
    families = scrape(lab.serve().port)
    assert value(families, "clonefleet_nodes", region="fsn", state="active") == 1
    assert value(families, "clonefleet_nodes", region="fsn", state="locked") == 1
    assert value(families, "clonefleet_nodes", region="hel", state="active") == 1
    assert value(families, "clonefleet_nodes", region="hel", state="drained") == 0
    assert {sample.labels["state"] for sample in families["clonefleet_nodes"]} == set(LIFECYCLE)
    since = value(families, "clonefleet_node_state_since_timestamp_seconds", node="fsn-2",
                  region="fsn", state="locked")
    assert since == lab.store.get("fsn-2").since


def test_node_the_store_never_saw_counts_as_ordered(lab) -> None:
    families = scrape(lab.serve().port)
    assert value(families, "clonefleet_nodes", region="fsn", state="ordered") == 2
    assert families["clonefleet_node_state_since_timestamp_seconds"] == []


def test_recorded_provisioning_steps_appear_as_durations_per_step_and_per_node(
        lab, tmp_path) -> None:
    running = lab.serve()
    # Written through another connection to the same database, as a `clonefleet provision`
    # process would while serve runs.
    other = make_store(tmp_path, lab.fleet)
    other.record_step("fsn-1", "install", "done", 300.0)
    other.record_step("fsn-2", "install", "failed", 12.5, "disk not found")
    other.record_step("fsn-2", "install", "done", 280.0)
    other.record_step("fsn-2", "unlock", "done", 4.0)
    other.close()
    families = scrape(running.port)
    assert value(families, "clonefleet_provision_step_seconds_count", step="install",
                 status="done") == 2
    assert value(families, "clonefleet_provision_step_seconds_sum", step="install",
                 status="done") == 580.0
    assert value(families, "clonefleet_provision_step_seconds_count", step="install",
                 status="failed") == 1
    assert value(families, "clonefleet_provision_step_last_seconds", node="fsn-2",
                 step="install") == 280.0
    assert value(families, "clonefleet_provision_step_last_seconds", node="fsn-2",
                 step="unlock") == 4.0


def test_drains_are_counted_by_node_and_source_and_the_reason_is_no_label(lab) -> None:
    for node in ("fsn-1", "fsn-2", "hel-1"):
        lab.store.set_state(node, "active", actor="test")
    # No DNS servers in this fleet: a drain is the recorded transition and an empty publish.
    drain_node(lab.fleet, lab.store, "fsn-1", reason="smartwatch: sda reallocated sectors",
               actor="smartwatch@fsn-1", timeout=10)
    drain_node(lab.fleet, lab.store, "hel-1", reason="kernel upgrade", actor="alice (cli)",
               timeout=10)
    families = scrape(lab.serve().port)
    assert value(families, "clonefleet_drains_total", node="fsn-1", source="smartwatch") == 1
    assert value(families, "clonefleet_drains_total", node="hel-1", source="operator") == 1
    assert value(families, "clonefleet_drains_total", node="fsn-2", source="smartwatch") == 0
    labels = {value for samples in families.values() for sample in samples
              for value in sample.labels.values()}
    assert not any("sector" in label or "upgrade" in label for label in labels)


def test_dns_verify_is_absent_before_the_first_run_and_a_run_reaching_no_server_is_not_ok(
        lab) -> None:
    running = lab.serve()
    assert "clonefleet_dns_verify_ok" not in scrape(running.port)
    before = time.time()
    verify(lab.fleet, lab.store, Endpoints({}))
    families = scrape(running.port)
    assert value(families, "clonefleet_dns_verify_ok") == 0
    assert value(families, "clonefleet_dns_verify_timestamp_seconds") >= before
    assert value(families, "clonefleet_dns_verify_servers", result="unconfigured") == 3
    assert value(families, "clonefleet_dns_verify_servers", result="agrees") == 0


def test_two_serve_processes_on_one_store_report_the_same_fleet_metrics(lab, tmp_path) -> None:
    lab.store.set_state("fsn-1", "active", actor="test")
    lab.store.record_step("fsn-1", "deploy", "done", 90.0)
    first = lab.serve()
    second_store = make_store(tmp_path, lab.fleet)
    second = lab.serve(load_fleet(lab.fleet.path), second_store)
    try:
        assert fleet_samples(scrape(first.port)) == fleet_samples(scrape(second.port))
    finally:
        second.stop()
        lab.servers.remove(second)
        second_store.close()


def test_serve_counts_its_own_answers_by_path_and_status(lab) -> None:
    running = lab.serve()
    exchange(running.port, raw_request("POST", "/v1/drain", b"{}"))
    exchange(running.port, raw_request("GET", "/v1/health"))
    exchange(running.port, raw_request("GET", "/some/random/path"))
    families = scrape(running.port)
    assert value(families, "clonefleet_serve_requests_total", path="/v1/drain",
                 code="401") == 1
    assert value(families, "clonefleet_serve_requests_total", path="/v1/health",
                 code="200") == 1
    assert value(families, "clonefleet_serve_requests_total", path="other", code="404") == 1


def test_metrics_answer_get_only(lab) -> None:
    running = lab.serve()
    answer = exchange(running.port, raw_request("POST", "/metrics", b"{}"))
    assert (answer.status, answer.headers["allow"]) == (405, "GET")


def test_metrics_with_a_token_need_it_as_bearer(lab, tmp_path) -> None:
    token_file = tmp_path / "metrics_token"
    token_file.write_text("s3cret-metrics-token\n")
    running = lab.serve(metrics_token=read_metrics_token(token_file))
    for headers in ({}, bearer("wrong"), bearer("s3cret-metrics-token\u00e9")):
        request = urllib.request.Request(f"http://127.0.0.1:{running.port}/metrics",
                                         headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
    assert "clonefleet_nodes" in scrape(running.port, "s3cret-metrics-token")


@pytest.mark.parametrize("content", [None, "", "two words\n", "line\nline\n"])
def test_unusable_metrics_token_file_is_a_config_error(tmp_path, content) -> None:
    path = tmp_path / "metrics_token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match="metrics token file"):
        read_metrics_token(path)


def test_drain_through_serve_with_real_powerdns_and_dns_verify_show_in_metrics(
        dns_lab: DnsLab) -> None:
    fleet, store = dns_lab.fleet, dns_lab.store
    running = start_thread_serve(DrainService(fleet, store, timeout=20))
    try:
        # Before any publish every server lacks the zone: verify fails on all of them.
        verify(fleet, store, dns_lab.endpoints, timeout=2)
        families = scrape(running.port)
        assert value(families, "clonefleet_dns_verify_ok") == 0
        assert value(families, "clonefleet_dns_verify_servers", result="disagrees") == 5

        published = publish(fleet, store, dns_lab.endpoints, actor="test")
        token = issue_token(fleet, store, "fsn-1")
        body = json.dumps({"node": "fsn-1", "reason": "disk failing: 8 pending sectors",
                           "request_id": "m-1"}).encode()
        answer = exchange(running.port,
                          raw_request("POST", "/v1/drain", body, headers=bearer(token)))
        assert answer.status == 200, answer.body
        # An operator's drain from the CLI, in the same store.
        drain_node(fleet, store, "ash-1", reason="maintenance", actor="bob (cli)",
                   endpoints=dns_lab.endpoints, timeout=20)
        verify(fleet, store, dns_lab.endpoints, timeout=2)
        families = scrape(running.port)
    finally:
        running.stop()

    assert value(families, "clonefleet_nodes", region="fsn", state="draining") == 1
    assert value(families, "clonefleet_nodes", region="fsn", state="active") == 1
    assert value(families, "clonefleet_nodes", region="ash", state="draining") == 1
    assert value(families, "clonefleet_drains_total", node="fsn-1", source="smartwatch") == 1
    assert value(families, "clonefleet_drains_total", node="ash-1", source="operator") == 1
    assert value(families, "clonefleet_drains_total", node="fsn-2", source="smartwatch") == 0
    last_serial = store.last_dns_serial()
    assert last_serial is not None and last_serial > (published.serial or 0)
    assert value(families, "clonefleet_dns_published_serial") == last_serial
    for server in fleet.nodes:
        assert value(families, "clonefleet_dns_server_serial", server=server) == last_serial
        assert value(families, "clonefleet_dns_server_push_ok", server=server) == 1
    assert value(families, "clonefleet_dns_verify_ok") == 1
    assert value(families, "clonefleet_dns_verify_servers", result="agrees") == 5
    assert value(families, "clonefleet_dns_verify_disagreements") == 0
    assert time.time() - value(families, "clonefleet_dns_verify_timestamp_seconds") < 60
