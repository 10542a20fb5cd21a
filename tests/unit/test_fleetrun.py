"""Provisioning several nodes at once (`clonefleet.fleetrun`): bounds, isolation of
failures, where a failure happened, and which nodes a command is about. No VM: the scheduler
tests inject the per-node runner; the others run the real Provisioner on nodes that have
nothing to do or fail at their first step for a real reason."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from many_nodes_fleet import CLOUD_NODES, LAB_NODES, UNSET_TOKEN, state_store, write_fleet

from clonefleet.errors import ConfigError, ProviderError, UnknownNodeError
from clonefleet.fleetrun import (
    Event,
    FleetRun,
    NoNodeSucceeded,
    SomeNodesFailed,
    run_bounded,
    select_nodes,
)
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.provision import ProvisionReport

pytestmark = pytest.mark.unit

ALL = (*LAB_NODES, *CLOUD_NODES)


class Gauge:
    """A stand-in for one node's provisioning that records how many ran at once, overall
    and per provider."""

    def __init__(self, fleet: Fleet, seconds: float = 0.15,
                 failing: dict[str, Exception] | None = None) -> None:
        self.fleet = fleet
        self.seconds = seconds
        self.failing = failing or {}
        self.lock = threading.Lock()
        self.now: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self.started: list[str] = []

    def __call__(self, name: str, wipe: bool) -> ProvisionReport:
        provider = self.fleet.node(name).provider
        with self.lock:
            self.started.append(name)
            for key in ("all", provider):
                self.now[key] += 1
                self.most[key] = max(self.most[key], self.now[key])
        try:
            time.sleep(self.seconds)
            if name in self.failing:
                raise self.failing[name]
            return ProvisionReport(node=name, final_state="deployed")
        finally:
            with self.lock:
                self.now["all"] -= 1
                self.now[provider] -= 1


def fleet_in(tmp_path: Path, **options: str) -> Fleet:
    return load_fleet(write_fleet(tmp_path, **options))


def test_parallel_1_runs_one_node_at_a_time_and_parallel_3_runs_three_at_once(
        tmp_path: Path) -> None:
    fleet = fleet_in(tmp_path)
    for parallel in (1, 3):
        gauge = Gauge(fleet)
        result = FleetRun(fleet, state_store(tmp_path), tmp_path, parallel=parallel,
                          run_node=gauge).provision(ALL)
        assert gauge.most["all"] == parallel
        assert result.succeeded == list(ALL) and result.parallel == parallel
    # One at a time, in the order named.
    gauge = Gauge(fleet, seconds=0.01)
    FleetRun(fleet, state_store(tmp_path), tmp_path, parallel=1, run_node=gauge).provision(ALL)
    assert gauge.started == list(ALL)


def test_a_provider_declaring_max_parallel_bounds_its_nodes_while_others_go_ahead(
        tmp_path: Path) -> None:
    fleet = fleet_in(tmp_path, cloud_settings="max_parallel = 1")
    gauge = Gauge(fleet)
    FleetRun(fleet, state_store(tmp_path), tmp_path, parallel=4, run_node=gauge).provision(
        ["hel-1", "hel-2", *LAB_NODES])
    assert gauge.most["cloud"] == 1
    assert gauge.most["lab"] == 3  # hel-2 waiting for its provider held no lab node back
    assert set(gauge.started[:4]) == {"hel-1", *LAB_NODES}


def test_max_parallel_below_one_is_refused_by_the_fleet_check(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"providers\.cloud\.max_parallel: 0 would let no node"):
        fleet_in(tmp_path, cloud_settings="max_parallel = 0")


def test_a_failing_node_never_stops_the_others_and_some_failed_exits_30(
        tmp_path: Path) -> None:
    fleet = fleet_in(tmp_path)
    gauge = Gauge(fleet, seconds=0.01, failing={"fsn-1": ProviderError("no such server")})
    result = FleetRun(fleet, state_store(tmp_path), tmp_path, parallel=1,
                      run_node=gauge).provision(ALL)
    assert gauge.started == list(ALL)
    assert result.failed == ["fsn-1"] and result.succeeded == list(ALL[1:])
    [failed] = [outcome for outcome in result.outcomes if not outcome.ok]
    assert (failed.exit_code, failed.message) == (4, "no such server")
    error = result.error()
    assert isinstance(error, SomeNodesFailed) and error.exit_code == 30
    assert str(error) == "provision failed on 1 of 5 nodes: fsn-1"


def test_every_node_failing_exits_31_and_all_succeeding_has_no_error(tmp_path: Path) -> None:
    fleet = fleet_in(tmp_path)
    failing = {name: ProviderError("down") for name in CLOUD_NODES}
    store = state_store(tmp_path)
    none = FleetRun(fleet, store, tmp_path, run_node=Gauge(fleet, 0.01, failing)).provision(
        CLOUD_NODES)
    error = none.error()
    assert isinstance(error, NoNodeSucceeded) and error.exit_code == 31
    assert str(error) == "provision failed on 2 of 2 nodes: hel-1, hel-2"
    every = FleetRun(fleet, store, tmp_path, run_node=Gauge(fleet, 0.01)).provision(LAB_NODES)
    assert every.error() is None


def test_a_bug_in_one_node_is_logged_with_its_traceback_and_the_others_finish(
        tmp_path: Path) -> None:
    fleet = fleet_in(tmp_path)
    events: list[Event] = []
    gauge = Gauge(fleet, 0.01, failing={"fsn-2": KeyError("oops")})
    result = FleetRun(fleet, state_store(tmp_path), tmp_path, run_node=gauge,
                      sink=events.append).provision(LAB_NODES)
    assert result.succeeded == ["fsn-1", "fsn-3"]
    [bug] = [outcome for outcome in result.outcomes if not outcome.ok]
    assert bug.message == "KeyError: 'oops'" and bug.exit_code == 1
    logs = [event.fields["message"] for event in events
            if event.node == "fsn-2" and event.kind == "log"]
    assert any("Traceback" in message and "KeyError" in message for message in logs)


def test_run_bounded_returns_results_in_item_order_whatever_finishes_first() -> None:
    def work(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    assert run_bounded([0.1, 0.0, 0.05], work, parallel=3) == [0.1, 0.0, 0.05]


def test_real_provisioner_failure_names_the_step_the_state_store_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UNSET_TOKEN, raising=False)
    monkeypatch.setenv("CLONEFLEET_AGE_KEY", str(tmp_path / "age.key"))
    fleet = fleet_in(tmp_path)
    store = state_store(tmp_path)
    events: list[Event] = []
    state_dir = tmp_path / "state" / fleet.name
    result = FleetRun(fleet, store, state_dir, sink=events.append).provision(
        ["hel-1", "fsn-1", "hel-2"])
    assert result.failed == ["hel-1", "hel-2"] and result.succeeded == ["fsn-1"]
    for outcome in result.outcomes[0], result.outcomes[2]:
        assert outcome.failed_step == "create server"
        assert outcome.exit_code == 2 and UNSET_TOKEN in outcome.message
        assert outcome.state is None
    assert [step.status for step in store.steps("hel-1")] == ["failed"]
    skipped = result.outcomes[1]
    assert skipped.ok and skipped.state == "deployed" and skipped.report is not None
    assert skipped.report.skipped
    # Each node: a start, its steps, a result; the result says how it ended.
    kinds = [(event.node, event.kind) for event in events if event.node == "hel-1"]
    assert kinds[0] == ("hel-1", "start") and kinds[-1] == ("hel-1", "result")
    assert ("hel-1", "step") in kinds
    [end] = [event for event in events if event.node == "hel-1" and event.kind == "result"]
    assert end.fields["failed_step"] == "create server" and end.fields["ok"] is False
    # Two nodes were about to install: the keys they share were made once, before them.
    assert (state_dir / "id_ed25519").exists() and (tmp_path / "age.key").exists()


def test_a_resumed_node_reports_only_this_runs_steps(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UNSET_TOKEN, raising=False)
    fleet = fleet_in(tmp_path)
    store = state_store(tmp_path)
    store.record_step("hel-1", "unlock", "failed", 3.0, "from an earlier run")
    time.sleep(0.01)
    result = FleetRun(fleet, store, tmp_path / "state" / fleet.name).provision(["hel-1"])
    assert result.outcomes[0].failed_step == "create server"


def test_nodes_are_chosen_by_name_region_or_all_and_unknown_ones_are_refused(
        tmp_path: Path) -> None:
    fleet = fleet_in(tmp_path)
    assert select_nodes(fleet, ["hel-2", "fsn-1", "hel-2"]) == ["hel-2", "fsn-1"]
    assert select_nodes(fleet, region="hel") == ["hel-1", "hel-2"]
    assert select_nodes(fleet, everything=True) == sorted(ALL)
    with pytest.raises(UnknownNodeError, match="unknown node 'nope-9'"):
        select_nodes(fleet, ["fsn-1", "nope-9"])
    with pytest.raises(ConfigError, match=r"unknown region 'xyz'.*known regions: fsn, hel"):
        select_nodes(fleet, region="xyz")
    with pytest.raises(ConfigError, match="name the nodes"):
        select_nodes(fleet)
    with pytest.raises(ConfigError, match="not several"):
        select_nodes(fleet, ["fsn-1"], everything=True)
