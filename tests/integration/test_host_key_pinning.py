"""One host-key pinning path, against a real sshd on a loopback port: the fleet's known_hosts,
written from the keys pinned in the state store, is what paramiko (RemoteShell), pyinfra (the
deploy runner, in its own process) and OpenSSH's own client all check. Each connects when the
entry matches and refuses when the pinned key is wrong."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sshd_fixture import Sshd, sshd_fleet

from clonefleet import nodefacts
from clonefleet.deploy import run_deploy
from clonefleet.errors import HostKeyMismatchError, HostKeyNotPinnedError
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.known_hosts import KnownHosts, fleet_known_hosts
from clonefleet.lab.qemu import free_port
from clonefleet.providers.base import ServerInfo, SshAccess
from clonefleet.ssh import RemoteShell, generate_ed25519
from clonefleet.state import SqliteStateStore, open_store

pytestmark = pytest.mark.integration

DEPLOY = '''
from pyinfra.api import deploy
from pyinfra.operations import server


@deploy("check")
def check():
    server.shell(name="answer", commands=["true"])
'''


class Pinned:
    """A fleet with one booted node, fsn-1, whose sshd is the test's sshd."""

    def __init__(self, folder: Path, sshd: Sshd) -> None:
        (folder / "pindeploy.py").write_text(DEPLOY)
        self.fleet: Fleet = load_fleet(sshd_fleet(folder, sshd, "pintest"))
        self.state_dir = folder / "state" / "pintest"
        self.store: SqliteStateStore = open_store(self.state_dir)
        self.known_hosts: KnownHosts = fleet_known_hosts(self.state_dir)
        self.sshd = sshd
        self.store.set_state("fsn-1", "booted", actor="test")
        nodefacts.record_server(self.store, "fsn-1", ServerInfo(
            node="fsn-1", server_id="lab-fsn-1", status="disk",
            ssh=SshAccess("127.0.0.1", sshd.port), unlock=SshAccess("127.0.0.1", free_port())))
        self.pin(sshd.host_key)

    def pin(self, ssh_host_key: str) -> None:
        nodefacts.record_host_keys(self.store, "fsn-1", ssh_host_key=ssh_host_key,
                                   dropbear_host_key=generate_ed25519("dropbear").public_line)

    def shell(self) -> RemoteShell:
        facts = nodefacts.load_pinned(self.store, "fsn-1", self.known_hosts)
        return RemoteShell(facts.require_ssh(), self.sshd.client_key,
                           known_hosts=self.known_hosts.path, what="fsn-1 sshd", timeout=10)

    def openssh(self) -> subprocess.CompletedProcess[str]:
        """OpenSSH's client with nothing but the fleet's known_hosts and strict checking."""
        return subprocess.run(
            ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
             "-o", f"UserKnownHostsFile={self.known_hosts.path}",
             "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
             "-i", str(self.sshd.client_key), "-p", str(self.sshd.port), "root@127.0.0.1",
             "true"], capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def pinned(tmp_path: Path, sshd: Sshd, monkeypatch: pytest.MonkeyPatch) -> Pinned:
    monkeypatch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "state"))
    # host data includes per-node secrets: a throwaway keystore identity
    monkeypatch.setenv("CLONEFLEET_AGE_KEY", str(tmp_path / "age.key"))
    return Pinned(tmp_path, sshd)


def test_paramiko_and_openssh_connect_when_the_entry_matches(pinned: Pinned) -> None:
    with pinned.shell() as shell:
        assert shell.run("echo pinned")[1].strip() == "pinned"
    assert (f"[127.0.0.1]:{pinned.sshd.port} {' '.join(pinned.sshd.host_key.split()[:2])} "
            "clonefleet:fsn-1:sshd\n") in pinned.known_hosts.path.read_text()
    answered = pinned.openssh()
    assert answered.returncode == 0, answered.stderr


def test_paramiko_and_openssh_refuse_when_the_pinned_key_is_wrong(pinned: Pinned) -> None:
    pinned.pin(generate_ed25519("someone-else").public_line)
    with pytest.raises(HostKeyMismatchError) as refused:
        pinned.shell()
    message = str(refused.value)
    assert refused.value.exit_code == 8 and not refused.value.transient
    assert "not the key pinned at install time" in message
    assert str(pinned.known_hosts.path) in message and "\n" not in message
    answered = pinned.openssh()
    assert answered.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in answered.stderr


def test_a_node_without_a_pinned_key_is_refused_not_trusted_on_first_use(
        pinned: Pinned) -> None:
    pinned.store.delete_fact("fsn-1", nodefacts.SSH_HOST_KEY)
    with pytest.raises(HostKeyNotPinnedError) as refused:
        pinned.shell()
    assert refused.value.exit_code == 8
    assert f"no key is pinned for [127.0.0.1]:{pinned.sshd.port}" in str(refused.value)
    assert [entry.role for entry in pinned.known_hosts.entries()] == ["dropbear"]


def test_pyinfra_connects_with_the_pinned_entry_and_refuses_a_wrong_one(
        pinned: Pinned) -> None:
    # What an earlier controller left: an untagged line, here with the rescue system's key
    # at the address sshd now answers on. The runner rewrites it from the store.
    rescue_key = generate_ed25519("rescue").public_line.split()
    pinned.known_hosts.path.write_text(
        f"[127.0.0.1]:{pinned.sshd.port} {rescue_key[0]} {rescue_key[1]}\n")

    result = run_deploy(pinned.fleet.path, ["fsn-1"], "pindeploy:check", timeout=300)["fsn-1"]
    assert result.connected and not result.failed, result.errors
    assert pinned.known_hosts.keys_for("127.0.0.1", pinned.sshd.port) == [
        " ".join(pinned.sshd.host_key.split()[:2])]
    assert rescue_key[1] not in pinned.known_hosts.path.read_text()

    pinned.pin(generate_ed25519("someone-else").public_line)
    refused = run_deploy(pinned.fleet.path, ["fsn-1"], "pindeploy:check",
                         timeout=300)["fsn-1"]
    assert refused.failed and not refused.connected and refused.host_key_refused
    [error] = refused.errors
    assert error.startswith("cannot connect: SSH host key error"), error
    assert error.endswith(f"checked against {pinned.known_hosts.path}") and "\n" not in error


def test_a_single_pinned_key_line_is_checked_the_same_way(pinned: Pinned) -> None:
    # How tests/vm reach a node: the key line from the store, no file.
    access = SshAccess("127.0.0.1", pinned.sshd.port)
    with RemoteShell(access, pinned.sshd.client_key, pinned=pinned.sshd.host_key,
                     what="fsn-1 sshd", timeout=10) as shell:
        assert shell.run("true")[0] == 0
    with pytest.raises(HostKeyMismatchError) as refused:
        RemoteShell(access, pinned.sshd.client_key, pinned=generate_ed25519().public_line,
                    what="fsn-1 sshd", timeout=10)
    assert "not the key pinned at install time" in str(refused.value)
    assert "per the given key line" in str(refused.value)
