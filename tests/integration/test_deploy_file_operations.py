"""The deploys' own file operations, run by the real pyinfra CLI on this machine (`@local`)
against files in a temporary folder: a secret file is never shown, a configuration that
`haproxy -c` refuses never replaces the live one, and a second run changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clonefleet.keystore import Keystore
from clonefleet.secrets import open_secrets
from clonefleet.services.fleet_certificate import fleet_certificate
from deploys.transport import CHECK, haproxy_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).with_name("pyinfra")

DEPLOY = f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
from deploys._files import checked_file, secret_file
secret_file(name="secret", content=open(os.environ["SECRET_SRC"]).read(),
            dest=os.environ["SECRET_DEST"], mode="600")
checked_file(name="config", content=open(os.environ["CONFIG_SRC"]).read(),
             dest=os.environ["CONFIG_DEST"], check={CHECK!r})
"""


def _run(folder: Path, secret: str, config: str) -> subprocess.CompletedProcess[str]:
    (folder / "secret.src").write_text(secret)
    (folder / "config.src").write_text(config)
    environment = {**os.environ, "SECRET_SRC": str(folder / "secret.src"),
                   "SECRET_DEST": str(folder / "live" / "fleet.pem"),
                   "CONFIG_SRC": str(folder / "config.src"),
                   "CONFIG_DEST": str(folder / "live" / "haproxy.cfg")}
    return subprocess.run([str(PYINFRA), "-y", "--diff", "@local", str(folder / "deploy.py")],
                          cwd=folder, env=environment, capture_output=True, text=True,
                          timeout=120)


def _no_change(output: str) -> int:
    total = next(line for line in output.splitlines() if "Grand total" in line).split()
    return int(total[-1]) if total[-1] != "-" else 0


def test_secret_and_checked_files_on_a_real_host(tmp_path: Path) -> None:
    (tmp_path / "deploy.py").write_text(DEPLOY)
    (tmp_path / "live").mkdir(mode=0o700)
    (tmp_path / "chroot").mkdir()
    secrets = open_secrets(tmp_path / "state", Keystore(tmp_path / "state" / "keystore",
                                                        tmp_path / "age.key"))
    pem = fleet_certificate(secrets, ["edge.fleet.example.com"]).pem
    key_line = pem.splitlines()[-2]
    config = haproxy_config({
        "transport_listen_addresses": ["127.0.0.1"], "transport_http_port": 1,
        "transport_https_port": 2, "transport_stats_port": 3,
        "transport_cert_path": str(tmp_path / "live" / "fleet.pem"),
        "transport_chroot": str(tmp_path / "chroot"),
        "transport_stats_socket": str(tmp_path / "admin.sock")})
    live = tmp_path / "live" / "haproxy.cfg"

    first = _run(tmp_path, pem, config)
    assert first.returncode == 0, first.stderr + first.stdout
    assert (tmp_path / "live" / "fleet.pem").read_text() == pem
    assert (tmp_path / "live" / "fleet.pem").stat().st_mode & 0o777 == 0o600
    assert live.read_text() == config
    assert "content hidden" in first.stdout + first.stderr
    assert key_line not in first.stdout + first.stderr

    second = _run(tmp_path, pem, config)
    assert second.returncode == 0 and _no_change(second.stdout + second.stderr) == 2

    broken = config.replace("http-check expect status 200", "http-check expect statuss 200")
    third = _run(tmp_path, pem, broken)
    assert third.returncode != 0
    assert "statuss" in third.stdout + third.stderr  # haproxy's own complaint is shown
    assert live.read_text() == config  # the working configuration stays live
    assert not (tmp_path / "live" / "haproxy.cfg.candidate").exists()


PACKAGES_DEPLOY = f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
from deploys._archive import packages_folder
packages_folder(name="code", sources=[("pkg", os.environ["PACKAGE_SRC"])],
                dest=os.environ["PACKAGE_DEST"])
"""


def _run_packages(folder: Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PACKAGE_SRC": str(folder / "src" / "pkg"),
                   "PACKAGE_DEST": str(folder / "opt" / "lib")}
    return subprocess.run([str(PYINFRA), "-y", "@local", str(folder / "packages.py")],
                          cwd=folder, env=environment, capture_output=True, text=True,
                          timeout=120)


def test_packages_folder_replaces_the_whole_tree_in_one_step(tmp_path: Path) -> None:
    (tmp_path / "packages.py").write_text(PACKAGES_DEPLOY)
    source = tmp_path / "src" / "pkg"
    (source / "sub").mkdir(parents=True)
    (source / "agent.py").write_text("VERSION = 1\n")
    (source / "sub" / "disks.py").write_text("DISKS = []\n")
    old = tmp_path / "opt" / "lib" / "pkg"  # what a file-by-file copy left on the node
    old.mkdir(parents=True)
    (old / "agent.py").write_text("VERSION = 0\n")
    (old / "gone.py").write_text("")
    lib = tmp_path / "opt" / "lib"

    first = _run_packages(tmp_path)
    assert first.returncode == 0, first.stderr + first.stdout
    assert lib.is_symlink() and (lib / "pkg" / "agent.py").read_text() == "VERSION = 1\n"
    assert not (lib / "pkg" / "gone.py").exists()
    first_release = os.readlink(lib)
    assert sorted(path.name for path in (tmp_path / "opt").iterdir()) == ["lib", first_release]

    (lib / "pkg" / "__pycache__").mkdir()  # the agent's python compiles what it imports
    (lib / "pkg" / "__pycache__" / "agent.cpython-311.pyc").write_bytes(b"\0")
    second = _run_packages(tmp_path)
    assert second.returncode == 0 and _no_change(second.stdout + second.stderr) == 1

    (source / "agent.py").write_text("VERSION = 2\n")
    (source / "sub" / "disks.py").unlink()
    third = _run_packages(tmp_path)
    assert third.returncode == 0 and _no_change(third.stdout + third.stderr) == 0
    assert (lib / "pkg" / "agent.py").read_text() == "VERSION = 2\n"
    assert not (lib / "pkg" / "sub" / "disks.py").exists()
    assert os.readlink(lib) != first_release
    assert sorted(path.name for path in (tmp_path / "opt").iterdir()) == ["lib", os.readlink(lib)]

    (lib / "pkg" / "agent.py").write_text("edited on the node\n")
    fourth = _run_packages(tmp_path)
    assert fourth.returncode == 0 and _no_change(fourth.stdout + fourth.stderr) == 0
    assert (lib / "pkg" / "agent.py").read_text() == "VERSION = 2\n"
    # Same archive, so the same release name is live: the repair unpacks beside it.
    assert os.readlink(lib).endswith("-1")
    assert sorted(path.name for path in (tmp_path / "opt").iterdir()) == ["lib", os.readlink(lib)]
