"""Drain and undrain safety rules, settling, and concurrent drains, without DNS servers."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from etcd_fixture import Backend
from fleet_text import ASH, FSN, FleetNode, fleet_toml

from clonefleet.dnsmap import (
    DnsError,
    DrainRefused,
    Endpoints,
    drain_node,
    plan_undrain,
    record_health,
    settle,
    undrain_node,
    wait_until_drained,
)
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.state import SqliteStateStore, StateStore

NO_SERVERS = Endpoints()


def make_fleet(directory: Path, *, total: int = 1, fsn_min: int = 1) -> Fleet:
    path = directory / "safety.toml"
    path.write_text(fleet_toml(
        "safety", "safety.clonefleet.test",
        [dataclasses.replace(FSN, min_active=fsn_min), dataclasses.replace(ASH, min_active=1)],
        [FleetNode("fsn-1", "fsn", "S-FSN1", ipv4="192.0.2.11"),
         FleetNode("fsn-2", "fsn", "S-FSN2", ipv4="192.0.2.12"),
         FleetNode("fsn-3", "fsn", "S-FSN3", ipv4="192.0.2.13"),
         FleetNode("ash-1", "ash", "S-ASH1", ipv4="198.51.100.21")],
        settings={"min_active_total": total, "dns_grace_seconds": 5},
        routed=[{"name": "edge", "ttl": 30}]))
    return load_fleet(path)


@pytest.fixture
def store(backend: Backend) -> StateStore:
    return backend.open()  # SQLite, then etcd


def activate(fleet: Fleet, store: StateStore) -> None:
    for name in fleet.nodes:
        store.set_state(name, "active", actor="test", reason="setup")


def state_of(store: StateStore, node: str) -> str:
    record = store.get(node)
    assert record is not None
    return record.state


def test_drain_without_reason_is_refused_and_state_unchanged(
        tmp_path: Path, store: StateStore) -> None:
    fleet = make_fleet(tmp_path)
    activate(fleet, store)
    with pytest.raises(DrainRefused, match="needs a reason"):
        drain_node(fleet, store, "fsn-1", reason="  ", actor="test", endpoints=NO_SERVERS)
    assert state_of(store, "fsn-1") == "active"


def test_drain_leaving_region_below_min_active_is_refused_unless_forced(
        tmp_path: Path, store: StateStore) -> None:
    fleet = make_fleet(tmp_path)
    activate(fleet, store)
    with pytest.raises(DrainRefused, match=r"region 'ash' with 0 active.*min_active = 1"):
        drain_node(fleet, store, "ash-1", reason="disk", actor="test", endpoints=NO_SERVERS)
    assert state_of(store, "ash-1") == "active"
    forced = drain_node(fleet, store, "ash-1", reason="disk", actor="test", force=True,
                        endpoints=NO_SERVERS)
    assert forced.state == "draining"
    record = store.get("ash-1")
    assert record is not None and record.reason == "disk (forced below minimum)"


def test_drain_leaving_fleet_below_min_active_total_is_refused(
        tmp_path: Path, store: StateStore) -> None:
    fleet = make_fleet(tmp_path, total=3, fsn_min=0)
    activate(fleet, store)
    drain_node(fleet, store, "fsn-1", reason="one", actor="test", endpoints=NO_SERVERS)
    with pytest.raises(DrainRefused, match=r"fleet with 2 active.*min_active_total = 3"):
        drain_node(fleet, store, "fsn-2", reason="two", actor="test", endpoints=NO_SERVERS)
    assert state_of(store, "fsn-2") == "active"


def test_drain_of_a_node_that_is_not_active_is_refused(
        tmp_path: Path, store: StateStore) -> None:
    fleet = make_fleet(tmp_path)
    activate(fleet, store)
    store.set_state("fsn-3", "deployed", actor="test", reason="reinstalled")
    with pytest.raises(DrainRefused, match="is deployed, not active"):
        drain_node(fleet, store, "fsn-3", reason="x", actor="test", endpoints=NO_SERVERS)
    assert state_of(store, "fsn-3") == "deployed"


def test_drain_of_a_draining_node_keeps_its_first_reason_and_reports_no_change(
        tmp_path: Path, store: StateStore) -> None:
    fleet = make_fleet(tmp_path)
    activate(fleet, store)
    first = drain_node(fleet, store, "fsn-1", reason="first", actor="a", endpoints=NO_SERVERS)
    again = drain_node(fleet, store, "fsn-1", reason="second", actor="b", endpoints=NO_SERVERS)
    assert first.changed and not again.changed
    record = store.get("fsn-1")
    assert record is not None and (record.reason, record.actor) == ("first", "a")
    assert [t.to_state for t in store.history("fsn-1")] == ["active", "draining"]


def test_undrain_after_a_failed_health_check_is_refused_until_a_check_passes(
        tmp_path: Path, store: StateStore) -> None:
    fleet = make_fleet(tmp_path)
    activate(fleet, store)
    drain_node(fleet, store, "fsn-1", reason="smart errors", actor="smartwatch",
               endpoints=NO_SERVERS)
    record_health(store, "fsn-1", False, source="smartwatch", detail="reallocated sectors")
    with pytest.raises(DrainRefused, match=r"last health check failed.*reallocated sectors"):
        undrain_node(fleet, store, "fsn-1", actor="test", endpoints=NO_SERVERS)
    assert state_of(store, "fsn-1") == "draining"
    record_health(store, "fsn-1", True, source="operator", detail="disk replaced")
    result = undrain_node(fleet, store, "fsn-1", actor="test", endpoints=NO_SERVERS)
    assert result.state == "active" and result.changed


def test_undrain_with_force_overrides_a_failed_health_check(
        tmp_path: Path, store: StateStore) -> None:
    fleet = make_fleet(tmp_path)
    activate(fleet, store)
    drain_node(fleet, store, "fsn-2", reason="x", actor="test", endpoints=NO_SERVERS)
    record_health(store, "fsn-2", False, source="rollout", detail="http 500")
    result = undrain_node(fleet, store, "fsn-2", actor="test", force=True, endpoints=NO_SERVERS)
    assert result.state == "active"


def test_undrain_of_a_node_in_a_lifecycle_state_is_refused(
        tmp_path: Path, store: StateStore) -> None:
    fleet = make_fleet(tmp_path)
    with pytest.raises(DrainRefused, match="is ordered, not deployed, draining or drained"):
        undrain_node(fleet, store, "fsn-1", actor="test", endpoints=NO_SERVERS)
    assert store.get("fsn-1") is None


def test_settle_promotes_draining_only_after_ttl_plus_grace(
        tmp_path: Path, store: StateStore) -> None:
    fleet = make_fleet(tmp_path)
    activate(fleet, store)
    drain_node(fleet, store, "fsn-1", reason="upgrade", actor="rollout", endpoints=NO_SERVERS)
    record = store.get("fsn-1")
    assert record is not None
    # routed ttl 30 + dns_grace_seconds 5
    assert settle(fleet, store, now=record.since + 34.9) == []
    assert state_of(store, "fsn-1") == "draining"
    assert settle(fleet, store, now=record.since + 35.0) == ["fsn-1"]
    drained = store.get("fsn-1")
    assert drained is not None
    assert (drained.state, drained.reason, drained.actor) == ("drained", "upgrade", "rollout")


def test_wait_until_drained_sleeps_until_the_grace_period_is_over_then_promotes(
        tmp_path: Path, store: StateStore) -> None:
    fleet = make_fleet(tmp_path)
    activate(fleet, store)
    drain_node(fleet, store, "fsn-1", reason="upgrade", actor="rollout", endpoints=NO_SERVERS)
    record = store.get("fsn-1")
    assert record is not None
    now = [record.since]
    slept: list[float] = []

    def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    state = wait_until_drained(fleet, store, "fsn-1", timeout=60, sleep=fake_sleep,
                               clock=lambda: now[0])
    assert state == "drained"
    assert sum(slept) == pytest.approx(35.0) and max(slept) <= 1.0


def test_wait_until_drained_refuses_to_wait_past_its_timeout(
        tmp_path: Path, store: StateStore) -> None:
    fleet = make_fleet(tmp_path)
    activate(fleet, store)
    drain_node(fleet, store, "fsn-1", reason="upgrade", actor="rollout", endpoints=NO_SERVERS)
    with pytest.raises(DnsError, match="after the 10 s timeout"):
        wait_until_drained(fleet, store, "fsn-1", timeout=10, sleep=lambda seconds: None)
    assert state_of(store, "fsn-1") == "draining"


RACE_SCRIPT = """
import json, sys, time
from pathlib import Path
from clonefleet.dnsmap import DrainRefused, Endpoints, drain_node
from clonefleet.inventory import load_fleet
from clonefleet.state import StateConfig, open_store
fleet_path, state_dir, config, node, go = sys.argv[1:6]
fleet = load_fleet(fleet_path)
settings = {key: tuple(value) if isinstance(value, list) else value
            for key, value in json.loads(config).items()}
store = open_store(state_dir, StateConfig(**settings))
while not Path(go).exists():
    time.sleep(0.002)
try:
    drain_node(fleet, store, node, reason="race", actor=node, endpoints=Endpoints(), timeout=10)
    print("drained")
except DrainRefused as error:
    print("refused", error)
"""


def race(fleet: Fleet, backend: Backend, nodes: list[str], go: Path) -> list[str]:
    config = json.dumps(dataclasses.asdict(backend.config))
    processes = [
        subprocess.Popen([sys.executable, "-c", RACE_SCRIPT, str(fleet.path),
                          str(backend.state_dir), config, node, str(go)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={"PYTHONPATH": str(Path.cwd()), "PATH": "/usr/bin"})
        for node in nodes
    ]
    time.sleep(1.0)  # let both import clonefleet and wait for the signal
    go.write_text("go")
    outputs = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
        outputs.append(stdout.strip())
    return outputs


def test_two_processes_draining_different_nodes_at_once_both_record_their_drain(
        tmp_path: Path, backend: Backend, store: StateStore) -> None:
    fleet = make_fleet(tmp_path, fsn_min=1)
    activate(fleet, store)
    outputs = race(fleet, backend, ["fsn-1", "fsn-2"], tmp_path / "go")
    assert outputs == ["drained", "drained"]
    assert state_of(store, "fsn-1") == "draining" and state_of(store, "fsn-2") == "draining"
    assert sorted(t.node for t in store.history() if t.to_state == "draining") == [
        "fsn-1", "fsn-2"]


def test_two_processes_racing_for_the_last_spare_node_of_a_region_only_one_wins(
        tmp_path: Path, backend: Backend, store: StateStore) -> None:
    fleet = make_fleet(tmp_path, fsn_min=2)
    activate(fleet, store)
    outputs = race(fleet, backend, ["fsn-1", "fsn-2"], tmp_path / "go")
    assert sorted(output.split()[0] for output in outputs) == ["drained", "refused"]
    states = sorted(state_of(store, node) for node in ("fsn-1", "fsn-2", "fsn-3"))
    assert states == ["active", "active", "draining"]


@pytest.mark.unit
def test_freshly_deployed_node_enters_dns_through_undrain(tmp_path: Path) -> None:
    fleet = load_fleet(Path(__file__).resolve().parents[2] / "inventory" / "lab.toml")
    store = SqliteStateStore(tmp_path / "s.sqlite")
    store.set_state("fsn-1", "deployed", actor="clonefleet provision")
    assert plan_undrain(fleet, store, "fsn-1") == ("deployed", [])
