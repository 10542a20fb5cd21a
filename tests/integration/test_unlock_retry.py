"""Unlock against a real Dropbear that drops connections during the banner.

The lab failure this guards against: Dropbear closes a new connection right after accepting
it while 5 earlier ones from the same address are still unauthenticated, and behind qemu's
user network every connection comes from the same address. The unlock must ride that out
within its deadline, and must still refuse a changed host key or a wrong passphrase on the
first attempt, without retrying.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from dropbear_fixture import Dropbear, dropbear_available, running_dropbear

from clonefleet import ssh
from clonefleet.errors import HostKeyMismatchError
from clonefleet.known_hosts import HostKeyEntry, KnownHosts, public_key_blob
from clonefleet.lab.qemu import free_port
from clonefleet.providers.base import SshAccess
from clonefleet.retry import GaveUp
from clonefleet.ssh import RemoteCommandTimedOut, RemoteShell, generate_ed25519
from clonefleet.unlock import BadPassphrase, unlock

pytestmark = pytest.mark.integration


class DroppingProxy:
    """A TCP proxy on loopback that closes its first `drop` connections right after
    accepting them (the client reads EOF where the SSH banner should be) and forwards the
    rest to `target`. Counts every connection it accepted."""

    def __init__(self, target: int, drop: int) -> None:
        self.target, self.drop = target, drop
        # Set: nothing is forwarded any more and nothing is closed (a frozen guest).
        self.frozen = threading.Event()
        self.accepted = 0
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.listener.settimeout(0.2)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def access(self) -> SshAccess:
        return SshAccess("127.0.0.1", self.port)

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            if self.accepted <= self.drop:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(30)
        try:
            while data := source.recv(65536):
                while self.frozen.is_set() and not self.stopping.is_set():
                    time.sleep(0.1)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(2)
        self.listener.close()


def pinned(dropbear: Dropbear, access: SshAccess, key: str) -> Path:
    """A fleet-style known_hosts pinning `key` for the Dropbear reached at `access`."""
    known_hosts = KnownHosts(dropbear.folder.parent / "known_hosts")
    known_hosts.replace_node("test-node", [HostKeyEntry(
        "test-node", "dropbear", access.host, access.port, public_key_blob(key))])
    return known_hosts.path


@pytest.fixture
def dropbear(tmp_path: Path) -> Iterator[Dropbear]:
    if os.geteuid() != 0:
        pytest.fail("the Dropbear unlock tests need root (a private mount namespace); run "
                    "scripts/test as root")
    if not dropbear_available():
        pytest.fail("dropbear is missing; run scripts/setup (package dropbear-bin)")
    with running_dropbear(tmp_path / "dropbear") as server:
        yield server


def test_unlock_rides_out_dropbears_cap_on_unauthenticated_connections(
        dropbear: Dropbear) -> None:
    dropbear.hold_unauthenticated()
    timer = dropbear.release_after(4)
    notes: list[str] = []
    started = time.monotonic()
    try:
        message = unlock(dropbear.access, dropbear.operator_key,
                         pinned(dropbear, dropbear.access, dropbear.host_key),
                         dropbear.passphrase, timeout=60, what="test-node", log=notes.append)
    finally:
        timer.cancel()
    elapsed = time.monotonic() - started
    assert message == "cryptsetup: root set up successfully"
    assert notes, "the first attempt should have been dropped by Dropbear"
    assert all("SSH protocol banner" in note or "EOF" in note for note in notes), notes
    assert 3.5 < elapsed < 30, elapsed


def test_a_cryptroot_unlock_still_waiting_for_its_device_is_tried_again(
        dropbear: Dropbear) -> None:
    # A degraded or slow RAID: cryptsetup does not ask yet, cryptroot-unlock just waits.
    Path(f"{dropbear.folder / 'expected'}.hang_once").touch()
    notes: list[str] = []
    message = unlock(dropbear.access, dropbear.operator_key,
                     pinned(dropbear, dropbear.access, dropbear.host_key),
                     dropbear.passphrase, timeout=60, what="test-node", log=notes.append,
                     attempt_timeout=3)
    assert message == "cryptsetup: root set up successfully"
    assert len(notes) == 1 and "not asking for the passphrase yet" in notes[0], notes


def test_a_passphrase_sent_by_an_attempt_that_gave_up_still_counts(dropbear: Dropbear) -> None:
    # Seen on the two-disk lab VM: the first attempt gave up while the RAID assembled, its
    # cryptroot-unlock kept the passphrase and opened the volume once the device appeared,
    # and the next attempt's cryptroot-unlock found nothing asking (exit 0, no output).
    dropbear.device_appears_in(3.5)
    notes: list[str] = []
    message = unlock(dropbear.access, dropbear.operator_key,
                     pinned(dropbear, dropbear.access, dropbear.host_key),
                     dropbear.passphrase, timeout=60, what="test-node", log=notes.append,
                     attempt_timeout=3)
    assert message == "cryptroot-unlock found nothing waiting for a passphrase (likely " \
                      "unlocked)"
    assert dropbear.deliveries() == ["ok"]
    assert len(notes) == 1 and "not asking for the passphrase yet" in notes[0], notes


def test_a_server_that_stops_answering_mid_command_is_left_in_bounded_time(
        dropbear: Dropbear, monkeypatch: pytest.MonkeyPatch) -> None:
    # paramiko waits for the answer to an exec request with no timeout: a Dropbear that
    # stops answering without closing (its initramfs handing over, a frozen guest) once
    # held an unlock attempt, and every node behind it, for 40 minutes.
    monkeypatch.setattr(ssh, "WATCHDOG_GRACE", 1.0)
    proxy = DroppingProxy(dropbear.port, drop=0)
    try:
        with RemoteShell(proxy.access, dropbear.operator_key, what="Dropbear (initramfs)",
                         known_hosts=pinned(dropbear, proxy.access, dropbear.host_key)
                         ) as shell:
            proxy.frozen.set()
            started = time.monotonic()
            with pytest.raises(RemoteCommandTimedOut, match="did not finish within 3 s"):
                shell.run("cryptroot-unlock", input_data=b"x", check=False, timeout=2)
            assert time.monotonic() - started < 10
    finally:
        proxy.close()
    assert dropbear.deliveries() == []


def test_unlock_retries_connections_closed_during_the_banner(dropbear: Dropbear) -> None:
    proxy = DroppingProxy(dropbear.port, drop=2)
    notes: list[str] = []
    try:
        message = unlock(proxy.access, dropbear.operator_key,
                         pinned(dropbear, proxy.access, dropbear.host_key),
                         dropbear.passphrase, timeout=60, what="test-node", log=notes.append)
    finally:
        proxy.close()
    assert message == "cryptsetup: root set up successfully"
    assert proxy.accepted == 3
    assert len(notes) == 2 and "unlock attempt 1 failed" in notes[0], notes


def test_a_changed_host_key_is_refused_at_once_without_retry(dropbear: Dropbear) -> None:
    proxy = DroppingProxy(dropbear.port, drop=0)
    notes: list[str] = []
    started = time.monotonic()
    try:
        with pytest.raises(HostKeyMismatchError) as refused:
            unlock(proxy.access, dropbear.operator_key,
                   pinned(dropbear, proxy.access, generate_ed25519().public_line),
                   dropbear.passphrase, timeout=60, what="test-node", log=notes.append)
    finally:
        proxy.close()
    assert refused.value.exit_code == 8
    assert "not the key pinned at install time" in str(refused.value)
    assert proxy.accepted == 1 and notes == []
    assert time.monotonic() - started < 10


def test_a_rejected_passphrase_is_not_retried(dropbear: Dropbear) -> None:
    proxy = DroppingProxy(dropbear.port, drop=0)
    notes: list[str] = []
    try:
        with pytest.raises(BadPassphrase) as rejected:
            unlock(proxy.access, dropbear.operator_key,
                   pinned(dropbear, proxy.access, dropbear.host_key), "wrong",
                   timeout=60, what="test-node", log=notes.append)
    finally:
        proxy.close()
    assert rejected.value.exit_code == 13
    assert proxy.accepted == 1 and notes == []


def test_giving_up_names_the_target_the_time_and_the_last_error(dropbear: Dropbear) -> None:
    dropbear.hold_unauthenticated()
    started = time.monotonic()
    with pytest.raises(GaveUp) as gave_up:
        unlock(dropbear.access, dropbear.operator_key,
               pinned(dropbear, dropbear.access, dropbear.host_key),
               dropbear.passphrase, timeout=4, what="test-node")
    message = str(gave_up.value)
    assert message.startswith(f"unlock test-node through Dropbear at root@127.0.0.1:"
                              f"{dropbear.port}: gave up after ")
    assert "attempts; last error: cannot reach Dropbear (initramfs)" in message
    assert gave_up.value.exit_code == 11
    assert time.monotonic() - started < 15
