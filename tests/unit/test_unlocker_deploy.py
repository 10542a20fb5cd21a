"""deploys/unlocker.py as pyinfra runs it on the @fake connector (nothing installed, nothing
running): the packages, the shipped archive, the identity made on the node, the unit; and a
missing store address refused before anything runs. The chroot test
(tests/chroot/test_unlocker_node.py) runs it for real."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit
RUNNER = Path(__file__).resolve().parents[1] / "fake_deploy.py"
URL = "etcd://10.66.0.1:2379,10.66.0.2:2379/clonefleet/prod"


def run(tmp_path: Path, data: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(RUNNER), "deploys.unlocker:unlocker",
                           str(tmp_path), json.dumps(data)], capture_output=True, text=True,
                          timeout=120)


def test_the_unlocker_gets_debian_packages_the_archive_its_own_key_and_a_hardened_unit(
        tmp_path: Path) -> None:
    result = run(tmp_path, {"unlocker_store_url": URL, "clonefleet_hostname": "fsn-1"})
    assert result.returncode == 0, result.stderr[-3000:]
    files = tmp_path / "files"
    commands = "\n".join(json.loads((tmp_path / "commands.json").read_text()))
    assert "apt-get update" in commands  # nothing installed on the fake node
    assert "python3-futurist" in commands and "python3-paramiko" not in commands
    assert "ssh-keygen -q -t ed25519 -N '' -C unlocker@fsn-1" in commands
    assert "/etc/clonefleet-unlockd/identity" in commands
    with tarfile.open(files / "opt/clonefleet-unlockd/lib-upload.tar") as archive:
        names = set(archive.getnames())
    assert {"clonefleet/unlockd/service.py", "etcd3gw/client.py", "pyrage/__init__.py",
            "paramiko/__init__.py", "smartwatch/notify.py"} <= names
    assert any(name.startswith("pyrage/pyrage.") and name.endswith(".so") for name in names)
    assert any(name.startswith("paramiko-") and name.endswith(".dist-info/METADATA")
               for name in names)
    assert not any("__pycache__" in name for name in names)
    environment = (files / "etc/clonefleet-unlockd/unlocker.env").read_text()
    assert f"CLONEFLEET_UNLOCKD_STATE={URL}\n" in environment
    assert "CLONEFLEET_UNLOCKD_LOOPBACK_AS=\n" in environment  # a real node: none
    unit = (files / "etc/systemd/system/clonefleet-unlockd.service").read_text()
    assert "ExecStart=/usr/local/bin/clonefleet-unlockd --state ${CLONEFLEET_UNLOCKD_STATE}" \
           in unit
    assert "--loopback-as ${CLONEFLEET_UNLOCKD_LOOPBACK_AS}" in unit
    for line in ("LoadCredential=identity:/etc/clonefleet-unlockd/identity", "DynamicUser=yes",
                 "StateDirectory=clonefleet-unlockd", "ProtectSystem=strict"):
        assert line in unit
    assert "granted on the controller as node:fsn-1" in unit
    wrapper = (files / "usr/local/bin/clonefleet-unlockd").read_text()
    assert "PYTHONPATH=/opt/clonefleet-unlockd/lib exec /usr/bin/python3 -m clonefleet" in wrapper
    assert "systemctl start clonefleet-unlockd.service" in commands


def test_without_a_store_address_the_deploy_is_refused_before_anything_runs(
        tmp_path: Path) -> None:
    result = run(tmp_path, {})
    assert result.returncode != 0
    assert "unlocker_store_url" in result.stderr and "[unlock] store_url" in result.stderr
    assert not (tmp_path / "commands.json").exists()


def test_every_node_image_has_the_unlockers_packages() -> None:
    # Any node can become an unlocker without apt: under emulation (and behind a firewall
    # with no mirror) a first unlocker deploy that fetched package lists took minutes.
    from clonefleet.image import base
    from deploys.unlocker import PACKAGES

    image = set(base.PACKAGES + base.APT_PACKAGES + base.HARDENING_PACKAGES)
    missing = set(PACKAGES) - image - {"openssh-client"}  # openssh-server's dependency
    assert not missing, missing


def test_the_alert_sender_an_unlocker_ships_needs_no_smart_agent_dependencies() -> None:
    # The unlocker ships smartwatch for its apprise sender, not pySMART: importing the
    # sender must not pull in the agent (an unlocker with alert URLs once could not start).
    code = ("import sys, smartwatch.notify, clonefleet.unlockd.service as s; "
            "s.apprise_alert(['json://127.0.0.1:9/'], print); "
            "print(sorted(m for m in sys.modules "
            "if m == 'pySMART' or m.startswith('smartwatch.')))")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=60, check=True).stdout
    assert shown.strip() == "['smartwatch.notify']", shown
