"""A real OpenSSH server on a loopback port, with its own host key and one client key:
for tests of everything that talks SSH to a node (disks, deploys) without a VM."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pdns_fixture import free_port

from clonefleet.ssh import generate_ed25519

SSHD = "/usr/sbin/sshd"


class Sshd:
    def __init__(self, folder: Path, extra_config: str = "") -> None:
        """`extra_config`: more sshd_config lines (e.g. `ChrootDirectory` to serve a Debian
        root as a node)."""
        folder.mkdir()
        self.port = free_port()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(folder / "host_key")], check=True, timeout=30)
        self.host_key = (folder / "host_key.pub").read_text().strip()
        client = generate_ed25519("disks-test")
        self.client_key = folder / "client_key"
        self.client_key.write_text(client.private_openssh)
        self.client_key.chmod(0o600)
        (folder / "authorized_keys").write_text(client.public_line + "\n")
        config = folder / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\n"
            f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPidFile {folder / 'sshd.pid'}\n"
            "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            # pyinfra uploads files (files.put, files.template) over SFTP.
            "Subsystem sftp internal-sftp\n" + extra_config)
        self.folder = folder
        self.config = config
        self.log = (folder / "sshd.log").open("wb")
        self.start()

    def start(self) -> None:
        """Start (again, after `stop`) on the same port with the same host key."""
        folder = self.folder
        if self.log.closed:
            self.log = (folder / "sshd.log").open("ab")
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)],
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = subprocess.run(["ssh-keyscan", "-p", str(self.port), "127.0.0.1"],
                                   capture_output=True, timeout=10, check=False)
            if probe.stdout:
                return
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"sshd did not start: {(folder / 'sshd.log').read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log.close()


def sshd_fleet(folder: Path, sshd: Sshd, name: str) -> Path:
    """A one-node lab fleet file (`<folder>/inventory/<name>.toml`, node fsn-1) whose operator
    key is the one `sshd` accepts, for running clonefleet's deploy runner against it. Deploy
    modules written to `folder` are importable by the runner."""
    public = sshd.client_key.with_name(sshd.client_key.name + ".pub")
    public.write_text((sshd.client_key.parent / "authorized_keys").read_text())
    (folder / "inventory").mkdir(exist_ok=True)
    path = folder / "inventory" / f"{name}.toml"
    path.write_text(f"""
[fleet]
name = "{name}"
domain = "{name}.clonefleet.test"
ssh_key = "{sshd.client_key}"

[regions.fsn]
provider = "lab"
latitude = 50.47
longitude = 12.37

[nodes.fsn-1]
region = "fsn"
disks = ["A"]
""")
    return path


def running_sshd(tmp_path: Path) -> Iterator[Sshd]:
    if not Path(SSHD).exists():
        pytest.fail("openssh-server is missing: apt-get install openssh-server")
    server = Sshd(tmp_path / "sshd")
    yield server
    server.stop()
