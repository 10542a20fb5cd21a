"""The waits that used to be hand-written loops keep their behaviour on `wait_until`."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from clonefleet.errors import ProviderError, StateError
from clonefleet.lab import qemu
from clonefleet.ssh import RemoteCommandFailed, _collect
from clonefleet.state import open_store

pytestmark = pytest.mark.unit


def test_a_held_lock_times_out_with_its_one_line_and_is_taken_once_free(
        tmp_path: Path) -> None:
    store = open_store(tmp_path)
    other = open_store(tmp_path)
    with store.lock("rollout"):
        started = time.monotonic()
        with pytest.raises(StateError, match=r"lock 'rollout' .* still held after 0 s; "
                                             "another clonefleet process is working"), \
                other.lock("rollout", timeout=0.2):
            pass
        assert 0.2 <= time.monotonic() - started < 2
    released = threading.Event()

    def hold() -> None:
        with store.lock("rollout"):
            released.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.1)
    threading.Timer(0.3, released.set).start()
    with other.lock("rollout", timeout=5):
        assert released.is_set()
    holder.join()


class FakeChannel:
    """A paramiko channel whose command prints in three chunks, then exits."""

    def __init__(self, chunks: list[bytes], exit_after: float | None) -> None:
        self.chunks = chunks
        self.started = time.monotonic()
        self.exit_after = exit_after
        self.closed = False

    def recv_ready(self) -> bool:
        return bool(self.chunks)

    def recv(self, size: int) -> bytes:
        return self.chunks.pop(0)

    def recv_stderr_ready(self) -> bool:
        return False

    def recv_stderr(self, size: int) -> bytes:
        return b""

    def exit_status_ready(self) -> bool:
        return self.exit_after is not None and time.monotonic() - self.started > self.exit_after

    def recv_exit_status(self) -> int:
        return 3

    def close(self) -> None:
        self.closed = True


def test_command_output_is_collected_until_the_command_exits() -> None:
    channel: Any = FakeChannel([b"one ", b"two ", b"three"], exit_after=0.2)
    assert _collect(channel, timeout=5) == (3, "one two three", "")
    assert channel.closed


def test_a_command_that_never_exits_times_out_with_its_message() -> None:
    channel: Any = FakeChannel([b"partial"], exit_after=None)
    with pytest.raises(RemoteCommandFailed, match="remote command timed out after 0 s"):
        _collect(channel, timeout=0.3)
    assert channel.closed


def vm(tmp_path: Path) -> qemu.VmConfig:
    return qemu.VmConfig(name="t", directory=tmp_path, memory_mb=256, disks=[], ssh_port=1,
                         dropbear_port=2)


def test_stop_waits_for_qemu_to_quit_and_kills_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    process = subprocess.Popen(["sleep", "30"])
    answers = iter([process.pid, process.pid, process.pid, None])
    monkeypatch.setattr(qemu, "running_pid", lambda config: next(answers, None))
    monkeypatch.setattr(qemu, "qmp", lambda config, command: None)
    try:
        qemu.stop(vm(tmp_path), timeout=5)
        assert process.poll() is None  # quit was enough: no SIGKILL
    finally:
        process.kill()
        process.wait()


def test_stop_kills_a_qemu_that_ignores_quit(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    process = subprocess.Popen(["sleep", "30"])

    def running(config: qemu.VmConfig) -> int | None:
        return process.pid if process.poll() is None else None

    def qmp(config: qemu.VmConfig, command: str) -> None:
        raise ProviderError("not running")

    monkeypatch.setattr(qemu, "running_pid", running)
    monkeypatch.setattr(qemu, "qmp", qmp)
    started = time.monotonic()
    qemu.stop(vm(tmp_path), timeout=0.3)
    assert process.wait(5) == -9 and time.monotonic() - started < 3
