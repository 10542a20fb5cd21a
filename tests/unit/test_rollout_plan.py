"""The rollout plan (clonefleet.rollout.plan) from gathered facts, and `clonefleet update`:
per-node packages and reboot reasons, batches from the recorded states, and the JSON. The
facts are the real outputs of tests/unit/fixtures/rollout; the SSH part (gather) is exercised
against real sshd in tests/integration/test_rollout_plan_ssh.py."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fleet_text import ASH, FSN, FleetNode, fleet_toml

from clonefleet.cli import _register, cli
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.rollout import lock, plan
from clonefleet.rollout.plan import make_plan, node_plan
from clonefleet.state import open_store

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).parent / "fixtures" / "rollout"
FLEET = fleet_toml(
    "upd", "upd.clonefleet.test", [replace(FSN, min_active=1), ASH],
    [FleetNode("fsn-1", "fsn", "U-FSN1"), FleetNode("fsn-2", "fsn", "U-FSN2"),
     FleetNode("ash-1", "ash", "U-ASH1"), FleetNode("ash-2", "ash", "U-ASH2")])
NOTHING = ("Reading package lists...\nCalculating upgrade...\n0 upgraded, 0 newly installed, "
           "0 to remove and 0 not upgraded.\n")
KERNEL = ("Inst linux-image-6.1.0-28-amd64 (6.1.119-1 Debian-Security:12/stable-security "
          "[amd64])\n")


def facts(upgrades: str, *, reboot: str = "no", needrestart: str = "NEEDRESTART-VER: 3.6\n"
          "NEEDRESTART-KSTA: 1\n", exit_code: int = 0) -> dict[str, Any]:
    return {"connected": True, "error": "", "facts": {
        "upgrades": {"exit": exit_code, "output": upgrades},
        "reboot_required": {"exit": 0, "output": reboot},
        "needrestart": {"exit": 0, "output": needrestart}}}


def test_host_upgrades_without_reboot_package_are_service_restarts() -> None:
    result = node_plan("fsn-1", "fsn", "active", facts((FIXTURES / "host-dist-upgrade.txt")
                                                       .read_text()))
    assert result.action == "restart" and not result.reboot
    assert result.packages and all(change.security for change in result.packages)
    assert result.skipped_upgrades > 0
    everything = node_plan("fsn-1", "fsn", "active", facts(
        (FIXTURES / "host-dist-upgrade.txt").read_text()), everything=True)
    assert everything.skipped_upgrades == 0
    assert len(everything.packages) == len(result.packages) + result.skipped_upgrades


def test_kernel_flag_and_needrestart_each_give_a_reboot_reason() -> None:
    result = node_plan("n", "fsn", "active", facts(
        KERNEL, reboot="yes\nlibc6\n",
        needrestart="NEEDRESTART-KCUR: 6.1.0-9-amd64\nNEEDRESTART-KSTA: 3\n"
                    "NEEDRESTART-SVC: ssh.service\n"))
    assert result.action == "reboot"
    assert result.reboot_reasons == (
        "upgrades linux-image-6.1.0-28-amd64",
        "/var/run/reboot-required is present (asked by libc6)",
        "needrestart: the running kernel 6.1.0-9-amd64 is not the newest installed "
        "(version upgrade pending)")
    assert result.restart_services == ("ssh.service",)


def test_a_pending_reboot_alone_is_work_and_nothing_at_all_is_not() -> None:
    assert node_plan("n", "fsn", "active", facts(NOTHING, reboot="yes\n")).has_work
    idle = node_plan("n", "fsn", "active", facts(NOTHING))
    assert idle.action == "none" and not idle.has_work


def test_missing_needrestart_is_said_and_apt_failure_is_the_nodes_error() -> None:
    result = node_plan("n", "fsn", "active", facts(KERNEL.replace("linux-image", "openssl-x"),
                                                  needrestart="NEEDRESTART-MISSING\n"))
    assert not result.needrestart and result.action == "restart"
    failed = node_plan("n", "fsn", "active", facts(
        "E: Could not get lock /var/lib/dpkg/lock-frontend", exit_code=100))
    assert failed.action == "unknown"
    assert failed.error == ("upgrades failed (exit 100): E: Could not get lock "
                            "/var/lib/dpkg/lock-frontend")


def _fleet(tmp_path: Path) -> Fleet:
    path = tmp_path / "upd.toml"
    path.write_text(FLEET)
    return load_fleet(path)


def _gather(per_node: dict[str, dict[str, Any]]) -> Any:
    def gather(fleet_path: Path, nodes: Sequence[str], refresh: bool) -> dict[str, Any]:
        return {name: per_node.get(name, facts(NOTHING)) for name in nodes}
    return gather


def test_plan_batches_active_nodes_with_work_and_says_why_others_wait(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    store = open_store(tmp_path / "state")
    for name in fleet.nodes:
        store.set_state(name, "active", actor="test")
    store.set_state("fsn-2", "drained", actor="smartwatch", reason="sda failing")
    result = make_plan(fleet, store, gather=_gather({
        "fsn-1": facts(KERNEL), "fsn-2": facts(KERNEL), "ash-1": facts(KERNEL),
        "ash-2": {"connected": False, "error": "cannot connect: timed out", "facts": {}}}))
    assert result.batches.batches == (("ash-1",),)
    blocked = {entry.node: entry.reason for entry in result.batches.blocked}
    assert blocked["fsn-2"] == "fsn-2 is drained (smartwatch: sda failing); only active nodes " \
        "are updated"
    assert blocked["fsn-1"].startswith("fsn-1 waits: region fsn has 1 active node(s) and "
                                       "min_active 1")
    assert [entry.node for entry in result.unreadable] == ["ash-2"]
    document = result.as_dict()
    assert document["expected_reboots"] == ["ash-1", "fsn-1", "fsn-2"]
    json.dumps(document)


def test_update_dry_run_prints_batches_and_json(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = _fleet(tmp_path)
    monkeypatch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "states"))
    store = open_store(tmp_path / "states" / "upd")
    for name in fleet.nodes:
        store.set_state(name, "active", actor="test")
    held = lock.take(store, user="ops", host="ctl", pid=9, heartbeat=False)
    monkeypatch.setattr(plan, "run_gather", _gather({"fsn-1": facts(KERNEL),
                                                     "ash-1": facts(KERNEL)}))
    _register()
    result = CliRunner().invoke(cli, ["--fleet", str(fleet.path), "update", "--dry-run",
                                      "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "1 batch(es) of at most 2 node(s), at most 1 per region; security updates only; " \
        "expected reboots: 2" in result.output
    assert "batch 1: ash-1, fsn-1" in result.output
    assert "rollout lock: held by ops@ctl (pid 9)" in result.output
    result = CliRunner().invoke(cli, ["--fleet", str(fleet.path), "--json", "update",
                                      "--dry-run", "fsn-1", "fsn-2"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["batches"] == [["fsn-1"]]
    assert [node["node"] for node in document["nodes"]] == ["fsn-1", "fsn-2"]
    assert document["nodes"][0]["packages"][0]["name"] == "linux-image-6.1.0-28-amd64"
    assert document["nodes"][1]["action"] == "none"
    held.release()


def test_by_default_only_nodes_that_are_or_were_in_service_are_read(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    store = open_store(tmp_path / "state")
    store.set_state("fsn-1", "active", actor="test")
    store.set_state("fsn-2", "active", actor="test")
    store.set_state("fsn-2", "drained", actor="operator", reason="disk swap")
    store.set_state("ash-1", "installed", actor="test")  # being provisioned
    asked: list[str] = []

    def gather(fleet_path: Path, nodes: Sequence[str], refresh: bool) -> dict[str, Any]:
        asked.extend(nodes)
        return {name: facts(NOTHING) for name in nodes}

    make_plan(fleet, store, gather=gather)
    assert asked == ["fsn-1", "fsn-2"]
    asked.clear()
    make_plan(fleet, store, ["ash-1"], gather=gather)
    assert asked == ["ash-1"]


def test_unreadable_nodes_end_with_exit_30_after_the_plan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = _fleet(tmp_path)
    monkeypatch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "states"))
    store = open_store(tmp_path / "states" / "upd")
    for name in fleet.nodes:
        store.set_state(name, "active", actor="test")
    monkeypatch.setattr(plan, "run_gather", _gather({
        "ash-2": {"connected": False, "error": "cannot connect: refused", "facts": {}}}))
    _register()
    result = CliRunner().invoke(cli, ["--fleet", str(fleet.path), "update", "--dry-run"])
    assert result.exit_code == 30
    assert "cannot connect: refused" in result.output
    assert result.output.strip().splitlines()[-1] == \
        "error: update plan failed on 1 of 4 nodes: ash-2"


def test_bad_batch_size_is_refused_before_any_node_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = _fleet(tmp_path)
    monkeypatch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "states"))

    def never(*arguments: Any) -> Any:
        raise AssertionError("nodes were read")

    monkeypatch.setattr(plan, "run_gather", never)
    _register()
    result = CliRunner().invoke(cli, ["--fleet", str(fleet.path), "update", "--dry-run",
                                      "--batch-size", "0"])
    assert result.exit_code == 2
    assert "--batch-size must be 1 or more, not 0" in result.output
