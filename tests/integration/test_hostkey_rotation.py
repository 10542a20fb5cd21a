"""`clonefleet keys rotate-host-keys` against a real OpenSSH server and a real Dropbear on
loopback, run by the same commands a node runs: `ssh-keygen` and `dropbearkey` make the new
keys beside the old ones, sshd is reloaded with SIGHUP (what `systemctl reload ssh` sends),
and the "initramfs rebuild" copies the Dropbear key file into the key Dropbear starts with
(`update-initramfs` on a node; proved on a lab VM). Pins are checked by real connections:
pinned logins to sshd, the unlock's own Dropbear login, and refusals with the old pin."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from dropbear_fixture import Dropbear, dropbear_available, make_dropbear
from sshd_fixture import Sshd, sshd_fleet

from clonefleet import hostkey_rotation, nodefacts
from clonefleet.cli import _register, cli
from clonefleet.errors import HostKeyMismatchError
from clonefleet.hostkey_rotation import NodeKeyFiles, rotate_host_keys
from clonefleet.known_hosts import KnownHosts, fleet_known_hosts
from clonefleet.liveprobe import presented_host_key
from clonefleet.providers.base import ServerInfo, SshAccess
from clonefleet.ssh import ConnectionFailed, RemoteShell
from clonefleet.state import StateStore, open_store
from clonefleet.unlock import send_passphrase

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not dropbear_available(), reason="dropbear not installed")]

_register()

NODE = "fsn-1"
FLEET = "hostkeys"


@dataclass
class Node:
    """A booted node: sshd up; Dropbear (its initramfs) down until `reboot`."""

    sshd: Sshd
    dropbear: Dropbear
    files: NodeKeyFiles
    folder: Path
    fleet_path: Path

    @property
    def state_dir(self) -> Path:
        return self.folder / "state" / FLEET

    def store(self) -> StateStore:
        return open_store(self.state_dir)

    def known_hosts(self) -> KnownHosts:
        return fleet_known_hosts(self.state_dir)

    def connect(self) -> RemoteShell:
        store = self.store()
        facts = nodefacts.load_pinned(store, NODE, self.known_hosts())
        return RemoteShell(facts.require_ssh(), self.sshd.client_key,
                           known_hosts=self.known_hosts().path, what=f"node {NODE}")

    def pins(self) -> tuple[str, str]:
        facts = nodefacts.load(self.store(), NODE)
        return str(facts.ssh_host_key), str(facts.dropbear_host_key)

    def reboot_into_initramfs(self) -> None:
        self.sshd.stop()
        self.dropbear.start()

    def boot(self) -> None:
        self.dropbear.stop()
        self.sshd.start()

    def unlock(self) -> str:
        return send_passphrase(self.dropbear.access, self.dropbear.operator_key,
                               self.known_hosts().path, self.dropbear.passphrase)


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    sshd = Sshd(tmp_path / "sshd")
    dropbear = make_dropbear(tmp_path / "dropbear")
    # The node's disk copy of the Dropbear key; Dropbear starts with the initramfs' copy.
    disk_key = dropbear.folder / "disk_key"
    disk_key.write_bytes((dropbear.folder / "host_key").read_bytes())
    disk_key.chmod(0o600)
    files = NodeKeyFiles(
        sshd_key=str(sshd.folder / "host_key"), dropbear_key=str(disk_key),
        reload_sshd=f"kill -HUP $(cat {sshd.folder / 'sshd.pid'})",
        rebuild_initramfs=f"cp {disk_key} {dropbear.folder / 'host_key'} && "
                          f"echo rebuilt >> {dropbear.folder / 'rebuilds'}")
    monkeypatch.setattr(hostkey_rotation, "NODE_KEY_FILES", files)
    monkeypatch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "state"))
    made = Node(sshd, dropbear, files, tmp_path, sshd_fleet(tmp_path, sshd, FLEET))
    store = made.store()
    nodefacts.record_server(store, NODE, ServerInfo(
        node=NODE, server_id="lab-fsn-1", status="disk",
        ssh=SshAccess("127.0.0.1", sshd.port), unlock=dropbear.access))
    nodefacts.record_host_keys(store, NODE, ssh_host_key=sshd.host_key,
                               dropbear_host_key=dropbear.host_key)
    store.close()
    yield made
    dropbear.stop()
    if sshd.process.poll() is None:
        sshd.stop()


def keys(node: Node, *args: str) -> tuple[int, str]:
    """Exit code and output (with --json: stdout alone, the progress lines go to stderr)."""
    result = CliRunner().invoke(cli, ["--fleet", str(node.fleet_path), *args])
    return result.exit_code, result.stdout if "--json" in args else result.output


def test_rotation_moves_both_pins_with_their_keys(node: Node) -> None:
    old_sshd, old_dropbear = node.pins()
    code, output = keys(node, "keys", "rotate-host-keys", NODE, "--dry-run")
    assert code == 0, output
    assert "would make a new sshd key on the node" in output
    assert node.pins() == (old_sshd, old_dropbear)
    assert not Path(node.files.sshd_key + ".new").exists()

    code, output = keys(node, "--json", "keys", "rotate-host-keys", NODE)
    assert code == 0, output
    report = json.loads(output)
    assert [entry["role"] for entry in report["keys"]] == ["sshd", "dropbear"]
    new_sshd, new_dropbear = node.pins()
    assert new_sshd != old_sshd and new_dropbear != old_dropbear
    # sshd presents the new key, a pinned login works, the old pin is refused.
    assert presented_host_key(SshAccess("127.0.0.1", node.sshd.port)) == new_sshd
    with node.connect() as shell:
        assert shell.run("echo in")[1] == "in\n"
    with pytest.raises(HostKeyMismatchError):
        RemoteShell(SshAccess("127.0.0.1", node.sshd.port), node.sshd.client_key,
                    pinned=old_sshd, what="the old pin")
    # Nothing left beside the keys; the "initramfs" was rebuilt once.
    assert not list(node.sshd.folder.glob("host_key.new*"))
    assert not Path(node.files.dropbear_key + ".new").exists()
    assert (node.dropbear.folder / "rebuilds").read_text() == "rebuilt\n"
    # The next boot's Dropbear presents the new key and the unlock goes through its pin.
    node.reboot_into_initramfs()
    assert presented_host_key(node.dropbear.access) == new_dropbear
    node.unlock()
    assert node.dropbear.deliveries() == ["ok"]

    code, output = keys(node, "--json", "keys", "status", NODE)
    [status] = json.loads(output)["nodes"]
    assert status["host_keys_rotated_at"] == report["rotated_at"]
    assert status["host_key_rotation_pending"] == []


class Crash(Exception):
    """The controller dying right there."""


class CrashAfter:
    """A login that dies right after the command containing `marker` ran on the node."""

    def __init__(self, shell: RemoteShell, marker: str) -> None:
        self.shell, self.marker = shell, marker

    def run(self, command: str, **options: object) -> tuple[int, str, str]:
        result = self.shell.run(command, **options)  # type: ignore[arg-type]
        if self.marker in command:
            raise Crash(self.marker)
        return result

    def close(self) -> None:
        self.shell.close()


def presented_once_listening(access: SshAccess, seconds: float = 30) -> str | None:
    """The key sshd presents once it listens again: SIGHUP makes it re-execute itself, and
    until the new process listens a connection is refused (seen on a loaded CI machine)."""
    deadline = time.monotonic() + seconds
    while (presented := presented_host_key(access)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return presented


def _made(path: str, show: list[str]) -> str:
    """The public key of a new key file left on the node."""
    out = subprocess.run([*show, path], check=True, capture_output=True, text=True).stdout
    return next(" ".join(line.split()[:2]) for line in out.splitlines()
                if line.startswith("ssh-ed25519 "))


# After: making sshd's key, reloading sshd, making Dropbear's key, rebuilding the initramfs.
@pytest.mark.parametrize("marker", ["ssh-keygen -q", "kill -HUP", "dropbearkey -t", "cp "])
def test_a_rotation_stopped_anywhere_is_finished_by_a_rerun(node: Node, marker: str) -> None:
    old = node.pins()
    store, known_hosts = node.store(), node.known_hosts()
    with pytest.raises(Crash):
        rotate_host_keys(store, known_hosts, NODE, lambda: CrashAfter(node.connect(), marker))
    recorded = hostkey_rotation.pending(store, NODE)
    # The key made last: recorded as pending once made, or only on the node if the
    # controller died in between; the re-run must use that one, not make another.
    expected = {role: line for role, line in recorded.items() if line}
    if marker == "ssh-keygen -q":
        assert recorded == {"sshd": "", "dropbear": ""}
        expected["sshd"] = _made(node.files.sshd_key + ".new", ["ssh-keygen", "-y", "-f"])
    if marker == "dropbearkey -t":
        assert recorded == {"dropbear": ""} and node.pins()[0] != old[0]  # sshd's finished
        expected["dropbear"] = _made(node.files.dropbear_key + ".new",
                                     ["dropbearkey", "-y", "-f"])
    if marker == "cp ":
        assert set(recorded) == {"dropbear"}
    sshd_before_rerun = node.pins()[0]
    if marker == "kill -HUP":  # sshd already presents the new key, before its pin moved
        assert presented_once_listening(SshAccess("127.0.0.1", node.sshd.port)) == \
            recorded["sshd"]
    else:  # every pin in use still works
        with node.connect() as shell:
            shell.run("true")
    result = rotate_host_keys(store, known_hosts, NODE, node.connect)
    new = node.pins()
    assert new[0] != old[0] and new[1] != old[1]
    for role, line in expected.items():
        assert new[0 if role == "sshd" else 1] == line, role
    if "sshd" not in recorded:  # a finished role is not rotated again
        assert new[0] == sshd_before_rerun
    assert hostkey_rotation.pending(store, NODE) == {}
    assert any(role.finished_interrupted for role in result.roles) == (marker == "kill -HUP")
    with node.connect() as shell:
        shell.run("true")
    node.reboot_into_initramfs()
    assert presented_host_key(node.dropbear.access) == new[1]


def test_a_reboot_into_the_new_initramfs_before_the_pin_moved_is_pinned_by_the_rerun(
        node: Node) -> None:
    store, known_hosts = node.store(), node.known_hosts()
    with pytest.raises(Crash):
        rotate_host_keys(store, known_hosts, NODE, lambda: CrashAfter(node.connect(), "cp "))
    pending = hostkey_rotation.pending(store, NODE)["dropbear"]
    node.reboot_into_initramfs()  # the node rebooted: the new initramfs, sshd down
    with pytest.raises(HostKeyMismatchError):
        node.unlock()  # the old pin refuses the new key: nothing sent
    assert node.dropbear.deliveries() == []
    code, output = keys(node, "keys", "rotate-host-keys", NODE)
    assert code == 0, output
    assert "dropbear" in output and "(finished an interrupted rotation)" in output
    assert node.pins()[1] == pending
    node.unlock()
    assert node.dropbear.deliveries() == ["ok"]


def test_an_unknown_key_is_refused_and_a_down_sshd_named_in_one_line(node: Node) -> None:
    store = node.store()
    other = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(node.folder / "other")], check=True)
    assert other.returncode == 0
    store.set_fact(NODE, nodefacts.SSH_HOST_KEY, (node.folder / "other.pub").read_text())
    code, output = keys(node, "keys", "rotate-host-keys", NODE)
    assert code == 8, output
    assert "neither the pinned key" in output and "keys repin fsn-1" in output
    assert hostkey_rotation.pending(store, NODE) == {}
    assert not Path(node.files.sshd_key + ".new").exists()  # nothing ran on the node

    store.set_fact(NODE, nodefacts.SSH_HOST_KEY, node.sshd.host_key)
    node.sshd.stop()
    code, output = keys(node, "keys", "rotate-host-keys", NODE)
    assert code == 11, output
    assert output.count("\n") == 1 and "must be booted and unlocked" in output
    with pytest.raises(ConnectionFailed):
        node.connect()
