"""The agent as deploys/smartwatch.py installs it: the shipped packages on Debian's python3 with
Debian's apprise, chardet and humanfriendly, alerting a local webhook."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "smartwatch"))

from smartwatch_replay import ReplayedMachine  # noqa: E402
from webhook_fixture import Webhook  # noqa: E402

pytestmark = pytest.mark.integration

DEBIAN_PYTHON = "/usr/bin/python3"
RUNNER = ROOT / "tests" / "fake_deploy.py"


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.stop()


def test_deployed_agent_runs_on_debian_python_and_alerts(tmp_path: Path, webhook) -> None:
    probe = subprocess.run([DEBIAN_PYTHON, "-c", "import apprise, chardet, humanfriendly"],
                           capture_output=True, text=True, timeout=60, check=False)
    if probe.returncode != 0:
        pytest.fail("Debian's agent dependencies are missing: apt-get install apprise "
                    "python3-chardet python3-humanfriendly (see docs/smartwatch.md)")
    deployed = tmp_path / "deployed"
    deployed.mkdir()
    subprocess.run([sys.executable, str(RUNNER), "deploys.smartwatch:smartwatch", str(deployed),
                    json.dumps({"smartwatch_node": "fsn-1"})],
                   check=True, capture_output=True, timeout=180)
    library = tmp_path / "lib"  # the uploaded archive, unpacked as the node does
    with tarfile.open(deployed / "files" / "opt" / "smartwatch" / "lib-upload.tar") as archive:
        archive.extractall(library, filter="data")
    url, received = webhook.url, webhook.received
    machine = ReplayedMachine(tmp_path / "machine").use("failed_selftest")
    config = tmp_path / "smartwatch.toml"
    config.write_text(
        f'node = "fsn-1"\nstate_db = "{tmp_path}/state.sqlite"\nsmartctl = "{machine.smartctl}"\n'
        f'mdstat = "{tmp_path}/none"\n[alerts]\nurls = ["{url}"]\n'
        '[drain]\nconfirm_delay_seconds = 0\n[selftest]\nenabled = false\n')
    result = subprocess.run(
        [DEBIAN_PYTHON, "-m", "smartwatch", "--config", str(config), "check", "--json"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
        env={"PYTHONPATH": str(library), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2, result.stderr
    report = json.loads(result.stdout)
    assert report["disks"][0]["serial"] == "WS10SM2A"
    assert [message["type"] for message in received] == ["failure"]
    assert "WS10SM2A" in str(received[0]["title"])
