"""deploys/smartwatch.py on pyinfra's @fake connector: what it installs and how it renders."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from smartwatch.config import load_config

pytestmark = pytest.mark.unit

RUNNER = Path(__file__).resolve().parents[1] / "fake_deploy.py"


def deploy(tmp_path: Path, **data: object) -> tuple[Path, list[str]]:
    completed = subprocess.run([sys.executable, str(RUNNER), "deploys.smartwatch:smartwatch",
                                str(tmp_path), json.dumps(data)],
                               capture_output=True, text=True, timeout=180, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return tmp_path / "files", json.loads((tmp_path / "commands.json").read_text())


def test_deploy_renders_a_config_the_agent_loads_and_writes_the_token(tmp_path: Path) -> None:
    files, _ = deploy(tmp_path, smartwatch_node="fsn-1",
                      smartwatch_alert_urls=["mailtos://ops@example.com"],
                      smartwatch_drain_url="https://10.66.0.1:8441",
                      smartwatch_drain_token="s3cret-token",
                      smartwatch_extra_config="[policy.counters.ata_197]\ncritical_at = 5")
    config = load_config(files / "etc/smartwatch/smartwatch.toml")
    assert config.node == "fsn-1"
    assert config.alerts.urls == ("mailtos://ops@example.com",)
    assert config.drain.url == "https://10.66.0.1:8441"
    assert config.drain.token_file == "/etc/smartwatch/drain_token"
    assert config.policy.counters["ata_197"].critical_at == 5
    assert (files / "etc/smartwatch/drain_token").read_text() == "s3cret-token\n"


def test_deploy_without_token_leaves_the_token_on_the_node_alone(tmp_path: Path) -> None:
    files, _ = deploy(tmp_path, smartwatch_node="fsn-1")
    assert not (files / "etc/smartwatch/drain_token").exists()


def test_deploy_copies_agent_and_pysmart_and_installs_debian_packages(tmp_path: Path) -> None:
    files, commands = deploy(tmp_path, smartwatch_node="fsn-1")
    with tarfile.open(files / "opt/smartwatch/lib-upload.tar") as archive:
        names = archive.getnames()
    assert "smartwatch/agent.py" in names and "pySMART/device.py" in names
    assert not [name for name in names if name.endswith(".pyc") or "__pycache__" in name]
    swap = next(command for command in commands if "lib-upload.tar" in command)
    assert "mv -T /opt/smartwatch/lib-next /opt/smartwatch/lib" in swap
    wrapper = (files / "usr/local/bin/smartwatch").read_text()
    assert "PYTHONPATH=/opt/smartwatch/lib exec /usr/bin/python3 -m smartwatch" in wrapper
    installs = [command for command in commands if "apt-get" in command and "install" in command]
    assert installs and all(package in installs[0] for package in
                            ("apprise", "python3-chardet", "python3-humanfriendly",
                             "smartmontools"))


def test_deploy_installs_hourly_check_and_frequent_spool_flush_timers(tmp_path: Path) -> None:
    files, commands = deploy(tmp_path, smartwatch_node="fsn-1")
    units = files / "etc/systemd/system"
    service = (units / "smartwatch.service").read_text()
    assert "ExecStart=/usr/local/bin/smartwatch check" in service
    assert "SuccessExitStatus=1 2" in service
    assert "OnCalendar=hourly" in (units / "smartwatch.timer").read_text()
    assert "ExecStart=/usr/local/bin/smartwatch flush" in \
        (units / "smartwatch-flush.service").read_text()
    assert "OnCalendar=*:0/5" in (units / "smartwatch-flush.timer").read_text()
    enabled = " ".join(command for command in commands if "systemctl" in command)
    assert "smartwatch.timer" in enabled and "smartwatch-flush.timer" in enabled
