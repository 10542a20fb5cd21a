"""The etcd state store as a fleet meets it: the CLI reads the cluster the fleet file names,
and writes during an etcd restart either complete or fail with one clear error, never
half-applied."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from etcd_fixture import Backend, EtcdServer
from fleet_text import FSN, FleetNode, fleet_toml

from clonefleet.cli import _register, cli
from clonefleet.errors import StateError
from clonefleet.state import StateConfig, open_store

pytestmark = pytest.mark.integration

_register()



@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd of this test's own: it gets restarted, which the session's must not be."""
    server = EtcdServer(tmp_path / "etcd")
    server.directory.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_status_shows_the_node_states_kept_in_the_fleets_etcd(
        etcd_server: EtcdServer, tmp_path: Path) -> None:
    prefix = f"cli/{tmp_path.name}"
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(fleet_toml(
        "etcdtest", "etcd.clonefleet.test", [FSN],
        [FleetNode("fsn-1", "fsn", "S-FSN1"), FleetNode("fsn-2", "fsn", "S-FSN2")],
        settings={"state": f"etcd://127.0.0.1:{etcd_server.client_port}/{prefix}"}))
    store = open_store(tmp_path, StateConfig("etcd", (etcd_server.url,), prefix))
    store.set_state("fsn-2", "ordered", actor="test", reason="lab server lab-fsn-2")
    result = CliRunner().invoke(cli, ["--fleet", str(fleet), "--json", "status"],
                                env={"CLONEFLEET_STATE_DIR": str(tmp_path / "state")})
    assert result.exit_code == 0, result.output
    rows = {row["node"]: row for row in json.loads(result.output)}
    assert rows["fsn-1"]["state"] is None and rows["fsn-2"]["state"] == "ordered"
    assert not (tmp_path / "state" / "etcdtest" / "state.sqlite").exists()


def test_writes_during_an_etcd_restart_complete_or_fail_clearly_never_half_applied(
        own_etcd: EtcdServer, tmp_path: Path) -> None:
    backend = Backend.etcd(own_etcd, tmp_path)
    config = StateConfig("etcd", backend.config.endpoints, backend.config.prefix, timeout=2)
    store = open_store(tmp_path, config)
    done: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def write() -> None:
        index = 0
        while not stop.is_set():
            index += 1
            try:
                with store.transaction():
                    store.set_state("n1", "active" if index % 2 else "drained", actor="t",
                                     reason=str(index))
                    store.set_fact("n1", "last", index)
                done.append(index)
            except StateError as error:
                failures.append(str(error))
                time.sleep(0.05)

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(0.5)
    own_etcd.stop()
    time.sleep(1.0)
    own_etcd.start()
    time.sleep(1.0)
    stop.set()
    writer.join(30)

    assert done and failures, "the writer ran both before and during the restart"
    assert all("\n" not in message and "etcd" in message for message in failures)
    # Every write is one etcd transaction: the state, its history entry and the fact agree.
    history = store.history("n1")
    last = store.get_fact("n1", "last")
    assert history[-1].reason == str(last) and store.get("n1").reason == str(last)  # type: ignore[union-attr]
    assert {int(t.reason) for t in history} >= set(done)
    assert len(history) == len({t.reason for t in history})
