"""The rollout's pure decisions (where a resumed node is picked up, whether to reboot, which
apt command, which DNS servers must confirm a drain), its report and exit codes, and the
orchestration's refusals and waits that touch no node (a real SQLite store; nodes are never
reached: the region rules keep every node where it is). The steps on real nodes are in
tests/integration/test_rollout_run.py."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fleet_text import ASH, FSN, FleetNode, fleet_toml

from clonefleet.cli import _register, cli
from clonefleet.dnsmap.drain import DrainResult
from clonefleet.errors import ConfigError
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.rollout import lock, plan
from clonefleet.rollout.apt import parse_simulation
from clonefleet.rollout.node_steps import (
    reboot_reasons,
    unconfirmed_in_service,
    upgrade_command,
)
from clonefleet.rollout.plan import make_plan
from clonefleet.rollout.progress import (
    DRAIN,
    HEALTH,
    REBOOT,
    RUN_FACT,
    STEPS,
    UNDRAIN,
    UPGRADE,
    Progress,
    RunOptions,
    RunRecord,
    next_steps,
    unfinished,
)
from clonefleet.rollout.report import (
    EXIT_HALTED_ON_FAILURE,
    EXIT_HALTED_WAITING,
    NodeReport,
    RolloutReport,
    RolloutStopped,
)
from clonefleet.rollout.run import Rollout, RolloutUnfinished
from clonefleet.state import FLEET_FACTS, StateStore, open_store

pytestmark = pytest.mark.unit

FLEET = fleet_toml(
    "upd", "upd.clonefleet.test", [replace(FSN, min_active=1), ASH],
    [FleetNode("fsn-1", "fsn", "U-FSN1"), FleetNode("fsn-2", "fsn", "U-FSN2"),
     FleetNode("ash-1", "ash", "U-ASH1")])
SIMULATION = (
    "Inst cf-tool [1.0] (1.1 Debian-Security:12/stable-security [all])\n"
    "Inst libcf1 (1.1 Debian-Security:12/stable-security [all])\n"
    "Inst cf-extra [1.0] (1.1 Debian:12/stable-updates [all])\n"
    "Conf cf-tool (1.1 Debian-Security:12/stable-security [all])\n")
KERNEL = ("Inst linux-image-6.1.0-28-amd64 (6.1.119-1 Debian-Security:12/stable-security "
          "[amd64])\n")


# -- where a node is picked up -----------------------------------------------------------------

def test_an_active_node_not_touched_by_this_run_gets_every_step() -> None:
    assert next_steps("fsn-1", "active", None, run=3).steps == STEPS
    # Progress of an earlier rollout does not count.
    old = Progress(2, done=(DRAIN, UPGRADE))
    assert next_steps("fsn-1", "active", old, run=3).steps == STEPS


def test_a_node_stopped_mid_way_redoes_only_the_step_it_was_in() -> None:
    during_upgrade = Progress(3, done=(DRAIN,), current=UPGRADE)
    pickup = next_steps("fsn-1", "updating", during_upgrade, run=3)
    assert pickup.steps == (UPGRADE, REBOOT, HEALTH, UNDRAIN)
    assert pickup.note == "fsn-1 stopped during upgrade; continuing with upgrade"
    after_reboot = Progress(3, done=(DRAIN, UPGRADE, REBOOT))
    assert next_steps("fsn-1", "updating", after_reboot, run=3).steps == (HEALTH, UNDRAIN)
    # Drained (TTL passed) but the drain step was not marked done: the drain is redone (it
    # republishes and waits only what is left of TTL and grace).
    assert next_steps("fsn-1", "draining", Progress(3, current=DRAIN), run=3).steps == STEPS


def test_a_failed_node_is_retried_from_its_failed_step() -> None:
    failed = Progress(3, done=(DRAIN,)).failed(UPGRADE, "apt-get failed (exit 100)")
    pickup = next_steps("fsn-1", "drained", failed, run=3)
    assert pickup.steps == (UPGRADE, REBOOT, HEALTH, UNDRAIN)
    assert "failed at upgrade (apt-get failed (exit 100))" in pickup.note


def test_a_node_drained_by_someone_else_is_left_alone_and_a_done_node_is_done() -> None:
    assert next_steps("fsn-2", "drained", None, run=3).steps == ()
    assert "not by this rollout" in next_steps("fsn-2", "drained", None, run=3).note
    assert next_steps("fsn-2", "drained", Progress(2, done=STEPS), run=3).steps == ()
    done = Progress(3, done=STEPS)
    assert next_steps("fsn-1", "active", done, run=3).steps == ()
    # Done, but drained again since (by hand, before the record said so): undrained again.
    assert next_steps("fsn-1", "drained", done, run=3).steps == (UNDRAIN,)
    # Undrained by hand after its drain: it starts over.
    assert next_steps("fsn-1", "active", Progress(3, done=(DRAIN,)), run=3).steps == STEPS
    assert next_steps("fsn-1", "retired", None, run=3).steps == ()


def test_unfinished_nodes_are_those_this_run_took_out_of_dns() -> None:
    progress = {
        "a": Progress(3, done=(DRAIN,), current=UPGRADE),  # crashed mid-upgrade
        "b": Progress(3, current=DRAIN),  # crashed during its drain
        "c": Progress(3, done=STEPS, result="done"),
        "d": Progress(2, done=(DRAIN,)),  # an older rollout's
        "e": None,
        "f": Progress(3, current=DRAIN),  # drain refused: still active
    }
    states = {"a": "updating", "b": "draining", "c": "active", "d": "drained",
              "e": "drained", "f": "active"}
    assert unfinished(progress, states, run=3) == ["a", "b"]


def test_progress_and_run_records_survive_the_store_round_trip() -> None:
    progress = Progress(7, packages=("cf-tool 1.0 → 1.1",), left_dns_at=10.0) \
        .started(DRAIN).finished(DRAIN, 1.5).started(UPGRADE)
    again = Progress.from_fact(json.loads(json.dumps(progress.as_fact())))
    assert again == progress
    assert again is not None and again.done == (DRAIN,) and again.current == UPGRADE
    record = RunRecord(7, 100.0, "ops@ctl", RunOptions(batch_size=2), ("a", "b"))
    assert RunRecord.from_fact(json.loads(json.dumps(record.as_fact()))) == record
    assert Progress.from_fact("garbage") is None and RunRecord.from_fact({}) is None


# -- what the node steps decide ----------------------------------------------------------------

def test_security_selection_installs_the_simulated_versions_of_installed_packages() -> None:
    upgrades = parse_simulation(SIMULATION).selected(False)
    command = upgrade_command(upgrades, everything=False)
    assert "NEEDRESTART_MODE=a" in command and "DEBIAN_FRONTEND=noninteractive" in command
    assert command.endswith("install --no-remove cf-tool=1.1")  # libcf1 comes as its dependency
    assert "cf-extra" not in command
    assert upgrade_command(parse_simulation(SIMULATION).selected(True), everything=True) \
        .endswith(" dist-upgrade")


def test_reboot_is_needed_for_reboot_packages_or_the_node_saying_so_until_it_booted() -> None:
    no_flag, current = "no\n", "NEEDRESTART-KSTA: 1\n"
    assert reboot_reasons((), no_flag, current, "boot-1", "boot-1") == ()
    assert reboot_reasons(("libc6",), no_flag, current, "boot-1", "boot-1") == (
        "upgraded libc6",)
    assert reboot_reasons((), "yes\nlinux-image-cftest\n", current, "", "") == (
        "/var/run/reboot-required is present (asked by linux-image-cftest)",)
    pending = reboot_reasons((), no_flag, "NEEDRESTART-KSTA: 3\nNEEDRESTART-KCUR: 6.1.0-27\n",
                             "b", "b")
    assert pending == ("needrestart: the running kernel 6.1.0-27 is not the newest installed "
                       "(version upgrade pending)",)
    # Booted since the upgrade (a resumed rollout after the reboot): no second reboot.
    assert reboot_reasons(("libc6",), "yes\n", current, "boot-1", "boot-2") == ()


def test_only_dns_servers_of_nodes_in_service_must_confirm_a_drain() -> None:
    result = DrainResult(node="fsn-1", state="draining", unreachable=["ash-1", "fsn-2"],
                         confirmed=["fsn-1"])
    assert unconfirmed_in_service(result, {"ash-1": "active", "fsn-2": "updating"}) == ["ash-1"]
    assert unconfirmed_in_service(result, {"ash-1": "drained", "fsn-2": "updating"}) == []


# -- the report ---------------------------------------------------------------------------------

def test_report_per_node_and_exit_codes() -> None:
    progress = Progress(4, done=STEPS, result="done", packages=("cf-tool 1.0 → 1.1",),
                        rebooted=False, out_of_dns_seconds=12.3)
    failed = Progress(4, done=(DRAIN,)).failed(UPGRADE, "apt-get failed (exit 100): postinst")
    report = RolloutReport(4, "halted-on-failure", (
        NodeReport.from_progress("fsn-1", "fsn", progress),
        NodeReport.from_progress("ash-1", "ash", failed),
        NodeReport.from_progress("fsn-2", "fsn", None, reason="the rollout stopped before it")),
        batches=(("fsn-1",), ("ash-1",)), seconds=61, halt_reason="1 node(s) failed")
    assert report.exit_code == EXIT_HALTED_ON_FAILURE == 40
    document = json.loads(json.dumps(report.as_dict()))
    assert document["failed"] == ["ash-1"]
    first, second, third = document["nodes"]
    assert first == {"node": "fsn-1", "region": "fsn", "result": "done",
                     "packages": ["cf-tool 1.0 → 1.1"], "rebooted": False,
                     "out_of_dns_seconds": 12.3, "failed_step": "", "reason": ""}
    assert second["result"] == "failed" and second["failed_step"] == "upgrade"
    assert third["result"] == "not started"
    assert report.summary() == ("rollout 4: 1 of 3 node(s) updated in 61 s, 2 batch(es); "
                                "halted-on-failure: 1 node(s) failed")


# -- orchestration without touching a node ---------------------------------------------------

def _fleet(tmp_path: Path) -> Fleet:
    path = tmp_path / "inventory" / "upd.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FLEET)
    return load_fleet(path)


def _facts(upgrades: str) -> dict[str, Any]:
    return {"connected": True, "error": "", "facts": {
        "upgrades": {"exit": 0, "output": upgrades},
        "reboot_required": {"exit": 0, "output": "no"},
        "needrestart": {"exit": 0, "output": "NEEDRESTART-KSTA: 1\n"}}}


def _gather(work: dict[str, str]) -> Any:
    def gather(fleet_path: Path, nodes: Any, refresh: bool) -> dict[str, Any]:
        return {name: _facts(work.get(name, "")) for name in nodes}
    return gather


def _store(tmp_path: Path, fleet: Fleet) -> StateStore:
    store = open_store(tmp_path / "states" / "upd")
    for name in fleet.nodes:
        store.set_state(name, "active", actor="test")
    return store


def test_a_region_at_its_minimum_makes_the_rollout_wait_then_halt(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    store = _store(tmp_path, fleet)
    store.set_state("fsn-2", "drained", actor="smartwatch", reason="sda failing")
    now = [1000.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    rollout = Rollout(fleet, store, tmp_path / "states" / "upd", clock=lambda: now[0],
                      sleep=sleep, poll_seconds=5)
    with pytest.raises(RolloutStopped) as stopped:
        rollout.start(lambda: make_plan(fleet, store, gather=_gather({"fsn-1": KERNEL})),
                      RunOptions(wait_seconds=12))
    report = stopped.value.report
    assert stopped.value.exit_code == EXIT_HALTED_WAITING == 41
    assert report.status == "halted-waiting"
    assert report.halt_reason.startswith("no node could go for 12 s: region fsn has 1 active "
                                         "node(s) and min_active 1")
    assert "fsn-2 drained (smartwatch: sda failing)" in report.halt_reason
    assert slept == [5, 5, 2]
    assert [node.result for node in report.nodes] == ["not started", "skipped", "skipped"]
    assert store.get("fsn-1").state == "active"  # type: ignore[union-attr]
    assert rollout.alerts_sent == [f"[CRITICAL] rollout {report.run} halted"]
    record = RunRecord.from_fact(store.get_fact(FLEET_FACTS, RUN_FACT))
    assert record is not None and record.status == "halted-waiting"
    assert lock.current_owner(store) == (None, False)  # released
    # A new rollout is refused while this one is unfinished; --resume continues it.
    with pytest.raises(RolloutUnfinished, match=r"rollout 1 .* stopped unfinished "
                       r"\(halted-waiting: no node could go"):
        rollout.start(lambda: make_plan(fleet, store, gather=_gather({})), RunOptions())
    store.set_state("fsn-2", "active", actor="operator", reason="disk replaced")
    store.set_state("fsn-1", "retired", actor="operator", reason="gone meanwhile")
    resumed = rollout.resume()
    assert resumed.status == "done" and resumed.run == report.run
    assert resumed.nodes[0].result == "skipped" and "fsn-1 is retired" in resumed.nodes[0].reason
    with pytest.raises(ConfigError, match="no unfinished rollout is recorded"):
        rollout.resume()


def test_cli_exit_codes_for_a_held_lock_waiting_and_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = _fleet(tmp_path)
    monkeypatch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "states"))
    store = _store(tmp_path, fleet)
    store.set_state("fsn-2", "drained", actor="smartwatch", reason="sda failing")
    monkeypatch.setattr(plan, "run_gather", _gather({"fsn-1": KERNEL}))
    _register()
    held = lock.take(store, user="ops", host="ctl", pid=9, heartbeat=False)
    result = CliRunner().invoke(cli, ["--fleet", str(fleet.path), "update"])
    assert result.exit_code == 3
    assert result.output.startswith("error: another rollout is running: the rollout lock is "
                                    "held by ops@ctl (pid 9)")
    held.release()
    result = CliRunner().invoke(cli, ["--fleet", str(fleet.path), "--json", "update",
                                      "--wait", "0"])
    assert result.exit_code == 41, result.output
    document = json.loads(result.stdout)
    assert document["status"] == "halted-waiting" and document["exit_code"] == 41
    assert document["nodes"][0]["node"] == "fsn-1"
    result = CliRunner().invoke(cli, ["--fleet", str(fleet.path), "update", "--resume",
                                      "fsn-1"])
    assert result.exit_code == 2
    assert "--resume continues the recorded rollout" in result.output
    # Options the recorded rollout keeps are refused by name, not silently ignored.
    result = CliRunner().invoke(cli, ["--fleet", str(fleet.path), "update", "--resume",
                                      "--batch-size", "2", "--all", "--wait", "5"])
    assert result.exit_code == 2
    assert result.output == ("error: --resume continues the recorded rollout with the options "
                             "it started with: drop --all, --batch-size, --wait (only "
                             "--boot-timeout and --take-over-lock may change)\n")
    # Those two may change: this resume goes ahead, keeps the recorded --wait 0 and halts again.
    result = CliRunner().invoke(cli, ["--fleet", str(fleet.path), "update", "--resume",
                                      "--boot-timeout", "60", "--take-over-lock"])
    assert result.exit_code == 41, result.output
    assert "resuming rollout" in result.output and "no node could go for 0 s" in result.output


# -- the reboot step's flow (a reboot cannot run here: the node and the unlock are stood in
# for; the unlock itself is `Provisioner.unlock`, the code of `clonefleet unlock`) ------------

class _Node:
    """What the reboot step asks a node over SSH, answered from a little state."""

    def __init__(self, boot: str, flag: str = "no\n", up: bool = True) -> None:
        self.boot, self.flag, self.up = boot, flag, up
        self.commands: list[str] = []

    def run(self, command: str, **options: Any) -> tuple[int, str, str]:
        self.commands.append(command)
        if "boot_id" in command:
            return 0, self.boot + "\n", ""
        if "reboot-required" in command:
            return 0, self.flag, ""
        if "needrestart" in command:
            return 0, "NEEDRESTART-KSTA: 1\n", ""
        if "systemctl reboot" in command:
            self.up = False
            return 0, "", ""
        raise AssertionError(command)

    def __enter__(self) -> _Node:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _Provider:
    """The node's provider as the reboot step may use it: its boot time, reset, power on."""

    boot_timeout = 600.0

    def __init__(self) -> None:
        self.asked: list[str] = []

    def reset(self, node: Any) -> None:
        self.asked.append(f"reset {node.name}")

    def power_on(self, node: Any) -> bool:
        self.asked.append(f"on {node.name}")
        return True


class _Unlocker:
    """The provisioner as the reboot step uses it: wait for Dropbear, then unlock. The first
    `silent` waits for Dropbear find nothing (a reboot that hung)."""

    def __init__(self, node: _Node, new_boot: str, silent: int = 0) -> None:
        self.node, self.new_boot, self.calls, self.silent = node, new_boot, 0, silent
        self.provider = _Provider()
        self.waits: list[float] = []
        self.fleet: Fleet | None = None  # set by _reboot_step

    def wait_for_dropbear(self, node: Any, timeout: float | None = None) -> None:
        from clonefleet.retry import GaveUp

        assert timeout is not None
        self.waits.append(timeout)
        if len(self.waits) <= self.silent:
            raise GaveUp(f"{node.name}: wait for Dropbear in the initramfs", timeout, 3,
                         OSError("no Dropbear in the initramfs banner"))

    def unlock(self, name: str, *, wait_for_sshd: bool, timeout: float | None) -> str:
        self.calls += 1
        assert wait_for_sshd
        self.node.boot, self.node.flag, self.node.up = self.new_boot, "no\n", True
        return "cryptsetup: root set up successfully"


def _reboot_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, node: _Node,
                 unlocker: _Unlocker, progress: Progress) -> Any:
    from clonefleet.errors import ClonefleetError
    from clonefleet.rollout import node_steps

    fleet = _fleet(tmp_path)
    unlocker.fleet = fleet
    store = _store(tmp_path, fleet)
    context = node_steps.NodeRun(fleet, store, tmp_path / "states" / "upd", 5, actor="test")
    update = node_steps.NodeUpdate(context, "fsn-1", progress)

    def shell(timeout: float = 0) -> _Node:
        if not node.up:
            raise ClonefleetError("cannot reach fsn-1 sshd")
        return node

    monkeypatch.setattr(update, "_shell", shell)
    monkeypatch.setattr(update, "_provisioner", lambda: unlocker)
    return update


def test_reboot_step_reboots_unlocks_and_checks_the_boot_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = _Node("boot-1", flag="yes\nlinux-image-cftest\n")
    unlocker = _Unlocker(node, "boot-2")
    update = _reboot_step(tmp_path, monkeypatch, node, unlocker,
                          Progress(5, done=(DRAIN, UPGRADE), boot_id="boot-1"))
    assert update.reboot().startswith("rebooted, unlocked (cryptsetup: root set up "
                                      "successfully)")
    assert unlocker.calls == 1 and update.progress.rebooted
    assert update.progress.reboot_reasons == (
        "/var/run/reboot-required is present (asked by linux-image-cftest)",)
    assert any("systemctl reboot" in command for command in node.commands)
    # announced to unlockd as a planned reboot (unlocked at once, whatever its policy)
    from clonefleet.unlockd.boots import EXPECTED_REBOOT

    expected = update.context.store.get_fact("fsn-1", EXPECTED_REBOOT)
    assert expected["by"] == "test" and expected["reason"].startswith("rollout: ")


def test_reboot_step_on_a_resumed_node_waiting_in_its_initramfs_only_unlocks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = _Node("boot-1", up=False)
    unlocker = _Unlocker(node, "boot-2")
    update = _reboot_step(tmp_path, monkeypatch, node, unlocker,
                          Progress(5, done=(DRAIN, UPGRADE), boot_id="boot-1",
                                   packages=("libc6 2.36-9 → 2.36-9+deb12u9",)))
    update.reboot()
    assert unlocker.calls == 1 and update.progress.rebooted
    assert not any("systemctl reboot" in command for command in node.commands)


def test_reboot_step_after_the_reboot_already_happened_does_not_reboot_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = _Node("boot-2")
    unlocker = _Unlocker(node, "boot-3")
    update = _reboot_step(tmp_path, monkeypatch, node, unlocker,
                          Progress(5, done=(DRAIN, UPGRADE), boot_id="boot-1",
                                   packages=("libc6 2.36-9 → 2.36-9+deb12u9",)))
    assert update.reboot() == "rebooted and back"
    assert unlocker.calls == 0 and update.progress.rebooted


def test_reboot_step_fails_when_the_node_comes_back_from_the_same_boot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clonefleet.rollout.node_steps import StepFailed

    node = _Node("boot-1", flag="yes\n")
    unlocker = _Unlocker(node, "boot-1")
    update = _reboot_step(tmp_path, monkeypatch, node, unlocker,
                          Progress(5, done=(DRAIN, UPGRADE), boot_id="boot-1"))
    with pytest.raises(StepFailed, match="did not reboot"):
        update.reboot()


def _probed_as(monkeypatch: pytest.MonkeyPatch, live: str, detail: str) -> list[str]:
    """What `status --live` would say of the node once the wait for Dropbear ran out."""
    from clonefleet.liveprobe import LiveStatus
    from clonefleet.rollout import boot_wait

    probed: list[str] = []

    def probe(provisioner: Any, node: Any) -> LiveStatus:
        probed.append(node.name)
        return LiveStatus(node.name, live, detail)  # type: ignore[arg-type]

    monkeypatch.setattr(boot_wait, "live_status", probe)
    return probed


def _hung_reboot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, silent: int, live: str,
                 detail: str) -> tuple[Any, _Unlocker, list[str]]:
    """A reboot step whose first `silent` waits for Dropbear find nothing, the node then
    probed as `live`: the step, its provisioner and the nodes probed."""
    node = _Node("boot-1", flag="yes\nlinux-image-cftest\n")
    unlocker = _Unlocker(node, "boot-2", silent=silent)
    probed = _probed_as(monkeypatch, live, detail)
    update = _reboot_step(tmp_path, monkeypatch, node, unlocker,
                          Progress(5, done=(DRAIN, UPGRADE), boot_id="boot-1"))
    return update, unlocker, probed


def test_a_reboot_that_hangs_is_power_reset_once_then_unlocked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clonefleet.unlockd.boots import EXPECTED_REBOOT

    update, unlocker, probed = _hung_reboot(
        tmp_path, monkeypatch, silent=1, live="unreachable",
        detail="no SSH answer; the provider says 'disk'")
    update.context.boot_timeout = 45.0
    detail = update.reboot()
    assert probed == ["fsn-1"]
    assert unlocker.provider.asked == ["reset fsn-1"]
    # Both waits had the whole boot time; then the usual unlock.
    assert unlocker.waits == [45.0, 45.0] and unlocker.calls == 1
    assert update.progress.rebooted
    assert "power reset through " in detail and "no SSH answer; the provider says 'disk'" \
        in detail and detail.endswith("unlocked (cryptsetup: root set up successfully), "
                                      "sshd answers with its pinned key"), detail
    # The reset is announced as the rollout's: unlockd unlocks the boot at once.
    expected = update.context.store.get_fact("fsn-1", EXPECTED_REBOOT)
    assert expected["reason"] == "rollout: power reset after a hung reboot", expected


def test_a_node_that_hangs_again_after_its_reset_fails_the_step_reset_only_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clonefleet.rollout.boot_wait import BootHung

    update, unlocker, _ = _hung_reboot(tmp_path, monkeypatch, silent=2, live="unreachable",
                                       detail="no SSH answer; the provider says 'running'")
    with pytest.raises(BootHung) as hung:
        update.reboot()
    assert unlocker.provider.asked == ["reset fsn-1"] and unlocker.calls == 0
    message = str(hung.value)
    assert "power reset through " in message and "silent again: fsn-1: wait for Dropbear " \
        "in the initramfs: gave up after 600 s" in message, message
    assert not update.progress.rebooted


def test_a_node_found_off_after_its_reboot_is_powered_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    update, unlocker, _ = _hung_reboot(tmp_path, monkeypatch, silent=1, live="off",
                                       detail="the provider says it is powered off")
    assert "power on through " in update.reboot()
    assert unlocker.provider.asked == ["on fsn-1"] and unlocker.calls == 1


def test_a_node_unlocked_meanwhile_is_not_reset_nor_unlocked_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = _Node("boot-1", flag="yes\n")
    unlocker = _Unlocker(node, "boot-2", silent=1)

    def unlocked_by_unlockd(provisioner: Any, name: Any) -> Any:
        from clonefleet.liveprobe import LiveStatus

        node.boot, node.flag, node.up = "boot-2", "no\n", True
        return LiveStatus("fsn-1", "sshd", "sshd answers with the pinned key")

    from clonefleet.rollout import boot_wait

    monkeypatch.setattr(boot_wait, "live_status", unlocked_by_unlockd)
    update = _reboot_step(tmp_path, monkeypatch, node, unlocker,
                          Progress(5, done=(DRAIN, UPGRADE), boot_id="boot-1"))
    detail = update.reboot()
    assert unlocker.provider.asked == [] and unlocker.calls == 0
    assert "unlocked meanwhile" in detail and "not unlocked here" in detail, detail
    assert update.progress.rebooted


def test_a_node_presenting_another_key_after_its_reboot_is_neither_reset_nor_sent_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clonefleet.rollout.boot_wait import BootHung

    update, unlocker, _ = _hung_reboot(
        tmp_path, monkeypatch, silent=1, live="host-key-mismatch",
        detail="dropbear at 127.0.0.1:2222 presents SHA256:other; nothing was sent to it")
    with pytest.raises(BootHung, match="presents SHA256:other; nothing was sent"):
        update.reboot()
    assert unlocker.provider.asked == [] and unlocker.calls == 0


def test_no_reboot_needed_is_said_and_nothing_is_unlocked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = _Node("boot-1")
    unlocker = _Unlocker(node, "boot-2")
    update = _reboot_step(tmp_path, monkeypatch, node, unlocker,
                          Progress(5, done=(DRAIN, UPGRADE), boot_id="boot-1",
                                   packages=("cf-tool 1.0 → 1.1",)))
    assert update.reboot().startswith("not needed")
    assert unlocker.calls == 0 and not update.progress.rebooted


def test_live_display_follows_batches_and_steps_on_a_terminal() -> None:
    import io

    from rich.console import Console

    from clonefleet.cli.rollout_display import LiveEvents
    from clonefleet.rollout.run import Event

    output = io.StringIO()
    display = LiveEvents(Console(file=output, force_terminal=True, width=120))
    display(Event("batch", batch=1, nodes=("fsn-1", "ash-1")))
    display(Event("step", node="fsn-1", step="drain", status="start"))
    display(Event("step", node="fsn-1", step="drain", status="done",
                  detail="out of DNS on 3 server(s), TTL and grace passed"))
    display(Event("step", node="ash-1", step="upgrade", status="failed", detail="apt-get failed"))
    assert display.rows["fsn-1"].status == "done" and display.rows["ash-1"].status == "failed"
    display.close()
    text = output.getvalue()
    assert "batch 1: fsn-1, ash-1" in text
    assert "fsn-1: drain done: out of DNS on 3 server(s)" in text
    assert "ash-1: upgrade failed: apt-get failed" in text
