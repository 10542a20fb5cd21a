"""The agent's command line, config validation, metrics, self-test schedule and mdstat."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from smartwatch_replay import RECORDINGS, ReplayedMachine

from smartwatch.collect import collect
from smartwatch.config import ConfigError, SelftestConfig, config_from_mapping, load_config
from smartwatch.history import History
from smartwatch.mdstat import parse_mdstat
from smartwatch.metrics import render
from smartwatch.policy import PolicyConfig, advance_counters, evaluate
from smartwatch.selftest import due, run_due

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def agent(config: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smartwatch", "--config", str(config),
                           *arguments], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)


def write_config(tmp_path: Path, machine: ReplayedMachine) -> Path:
    config = tmp_path / "smartwatch.toml"
    config.write_text(f'node = "fsn-1"\nstate_db = "{tmp_path}/state.sqlite"\n'
                      f'smartctl = "{machine.smartctl}"\nmdstat = "{tmp_path}/none"\n'
                      '[drain]\nconfirm_delay_seconds = 0\n[selftest]\nenabled = false\n')
    return config


@pytest.mark.parametrize(("recording", "code"), [
    ("healthy_nvme", 0), ("raid1_degraded", 1), ("failed_selftest", 2)])
def test_check_exit_code_says_ok_warning_or_critical(
        tmp_path: Path, machine: ReplayedMachine, recording: str, code: int) -> None:
    machine.use(recording)
    if (RECORDINGS / recording / "mdstat").exists():
        (tmp_path / "none").write_text((RECORDINGS / recording / "mdstat").read_text())
    result = agent(write_config(tmp_path, machine), "check", "--json")
    assert result.returncode == code, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == ["ok", "warning", "critical"][code]
    assert report["node"] == "fsn-1"


def test_missing_config_is_one_line_error_with_exit_3(tmp_path: Path) -> None:
    result = agent(tmp_path / "absent.toml", "check")
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1
    assert "absent.toml: not found" in result.stderr


def test_status_shows_remembered_findings(tmp_path: Path, machine: ReplayedMachine) -> None:
    config = write_config(tmp_path, machine)
    machine.use("failed_selftest")
    agent(config, "check")
    status = json.loads(agent(config, "status", "--json").stdout)
    assert [finding["check"] for finding in status["findings"]] == ["selftest"]


def test_unknown_config_key_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"drain\.retries: unknown key"):
        config_from_mapping({"drain": {"retries": 3}})


def test_policy_severity_must_be_warning_or_critical() -> None:
    with pytest.raises(ConfigError, match="md_degraded must be 'warning' or 'critical'"):
        config_from_mapping({"policy": {"md_degraded": "page"}})


def test_counter_override_changes_only_that_counter(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[policy.counters.ata_5]\ncritical_at = 10\n")
    policy = load_config(path).policy
    assert policy.counters["ata_5"].critical_at == 10
    assert policy.counters["ata_197"].critical_at == PolicyConfig().counters[
        "ata_197"].critical_at


def test_metrics_carry_severity_per_disk_and_the_heartbeat(machine: ReplayedMachine) -> None:
    machine.use("nvme_critical")
    readings, _ = collect(str(machine.smartctl), "/nonexistent")
    findings = evaluate(readings[0], advance_counters({}, readings[0], 0), PolicyConfig(), 0)
    text = render("fsn-1", readings, findings, 1234.0)
    assert 'smartwatch_last_check_timestamp_seconds{node="fsn-1"} 1234' in text
    [severity] = [line for line in text.splitlines()
                  if line.startswith("smartwatch_disk_severity{")]
    assert severity.endswith('serial="C91LD1N40ANA03637"} 2')
    assert "smartwatch_nvme_critical_warning{" in text


def test_selftest_schedule_is_short_daily_and_long_on_saturday() -> None:
    schedule = SelftestConfig()
    assert due(schedule, datetime.datetime(2026, 11, 23, 2, 10)) == ["short"]  # a Monday
    assert due(schedule, datetime.datetime(2026, 11, 28, 3, 5)) == ["long"]  # a Saturday
    assert due(schedule, datetime.datetime(2026, 11, 23, 14, 0)) == []
    assert due(SelftestConfig(enabled=False), datetime.datetime(2026, 11, 23, 2, 0)) == []


def test_short_selftest_is_started_once_per_day(tmp_path: Path,
                                                machine: ReplayedMachine) -> None:
    folder = tmp_path / "recording"
    folder.mkdir()
    for source in (RECORDINGS / "healthy_sata_hdd").iterdir():
        (folder / source.name).write_text(source.read_text())
    (folder / "_-d_sat_-t_short__dev_sda").write_text(
        "smartctl 7.3 2022-02-28 r5338 [x86_64-linux-6.1.0-13-amd64] (local build)\n\n"
        "=== START OF OFFLINE IMMEDIATE AND SELF-TEST SECTION ===\n"
        'Sending command: "Execute SMART Short self-test routine immediately in off-line '
        'mode".\nDrive command "Execute SMART Short self-test routine immediately in '
        'off-line mode" successful.\nTesting has begun.\n'
        "Please wait 1 minutes for test to complete.\n"
        "Test will complete after Mon Nov 23 02:11:00 2026\n\n"
        "Use smartctl -X to abort test.\n")
    machine.use(folder)
    readings, _ = collect(str(machine.smartctl), "/nonexistent")
    history = History(tmp_path / "state.sqlite")
    try:
        at_two = datetime.datetime(2026, 11, 23, 2, 10).timestamp()
        started = run_due(SelftestConfig(), readings, history, str(machine.smartctl), at_two)
        assert [(test.kind, test.started) for test in started] == [("short", True)]
        assert run_due(SelftestConfig(), readings, history, str(machine.smartctl),
                       at_two + 1800) == []
        assert machine.calls().count("-d sat -t short /dev/sda") == 1
    finally:
        history.close()


def test_mdstat_rebuilding_array_is_degraded_and_recovering() -> None:
    [array] = parse_mdstat(
        "Personalities : [raid1]\n"
        "md2 : active raid1 sdb3[2] sda3[0]\n"
        "      1952333824 blocks super 1.2 [2/1] [U_]\n"
        "      [=>...................]  recovery =  8.5% (166023424/1952333824) "
        "finish=150.3min speed=198054K/sec\n"
        "      bitmap: 3/15 pages [12KB], 65536KB chunk\n\nunused devices: <none>\n")
    assert (array.name, array.level, array.degraded, array.recovering) == \
        ("md2", "raid1", True, True)
    assert array.members == ("sdb3", "sda3")


def test_mdstat_healthy_array_is_not_degraded() -> None:
    [array] = parse_mdstat("md0 : active raid1 nvme1n1p2[1] nvme0n1p2[0]\n"
                           "      523264 blocks super 1.2 [2/2] [UU]\n")
    assert not array.degraded and array.map == "UU"


def test_test_alert_with_an_unknown_url_scheme_is_one_line_error_with_exit_3(
        tmp_path: Path, machine: ReplayedMachine) -> None:
    config = write_config(tmp_path, machine)
    config.write_text(config.read_text() + '[alerts]\nurls = ["nonsense://nowhere"]\n')
    result = agent(config, "test-alert")
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1 and "nonsense://nowhere" in result.stderr


def test_bad_alert_url_does_not_stop_the_check_and_alerts_wait_for_the_next_run(
        tmp_path: Path, machine: ReplayedMachine) -> None:
    from smartwatch.agent import run_check

    machine.use("failed_selftest")
    config = load_config(write_config(tmp_path, machine))
    broken = config_from_mapping({
        "node": "fsn-1", "state_db": config.state_db, "smartctl": config.smartctl,
        "mdstat": config.mdstat, "metrics_file": str(tmp_path / "m.prom"),
        "alerts": {"urls": ["nonsense://nowhere"]}, "selftest": {"enabled": False},
        "drain": {"confirm_delay_seconds": 0}})
    result = run_check(broken, sleep=lambda seconds: None)
    assert [notice.kind for notice in result.notices_failed] == ["new"]
    assert (tmp_path / "m.prom").exists()
    history = History(config.state_db)
    try:
        assert history.findings()["WS10SM2A:selftest"].last_alert_at is None
    finally:
        history.close()


def test_node_with_no_readable_disk_warns_naming_the_block_devices_it_saw(
        tmp_path: Path, machine: ReplayedMachine) -> None:
    sys_block = tmp_path / "sys-block"
    for name in ("vda", "vdb", "loop0", "sr0", "dm-0"):
        (sys_block / name).mkdir(parents=True)
    config = write_config(tmp_path, machine)
    config.write_text(config.read_text().replace(
        'mdstat = ', f'sys_block = "{sys_block}"\nmdstat = '))
    machine.use("no_smart_disk")  # smartctl --scan-open lists nothing, as on virtio disks
    result = agent(config, "check", "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "warning" and report["disks"] == []
    [finding] = report["node_findings"]
    assert (finding["check"], finding["severity"], finding["disk"]) == (
        "no_smart_disk", "warning", "fsn-1")
    assert finding["reason"] == ("no SMART-capable disk: block devices seen: vda, vdb; "
                                 "smartctl found no disk. Failures of these disks go "
                                 "unnoticed.")
    machine.use("healthy_sata_hdd")
    healthy = json.loads(agent(config, "check", "--json").stdout)
    assert healthy["status"] == "ok" and healthy["node_findings"] == []
