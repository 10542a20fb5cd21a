"""The fleet's operator key is created once, even when several threads need it first at once
(a node's rescue boot and its layer build run together; so do several nodes)."""

from __future__ import annotations

import threading
from pathlib import Path

from clonefleet.ssh import OperatorKey, ensure_operator_key


def test_threads_needing_the_key_at_once_all_get_the_one_key(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    results: list[OperatorKey] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def need_key() -> None:
        start.wait()
        try:
            results.append(ensure_operator_key("", state_dir))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=need_key) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({key.public_line for key in results}) == 1 and len(results) == 8
    assert results[0].public_line.startswith("ssh-ed25519 ")
    assert (state_dir / "id_ed25519").stat().st_mode & 0o777 == 0o600
    assert ensure_operator_key("", state_dir) == results[0]


def _private_key_public_line(path: Path) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()


def test_a_torn_or_missing_public_key_is_derived_again_from_the_private_key(
        tmp_path: Path) -> None:
    # What a reader saw when the public file was opened but not yet written (the bench's
    # unlock then sent a node layer with an empty operator key), or after a crash.
    state_dir = tmp_path / "state"
    first = ensure_operator_key("", state_dir)
    expected = _private_key_public_line(first.path)
    for torn in ("", "ssh-ed25519", None):
        public = state_dir / "id_ed25519.pub"
        if torn is None:
            public.unlink()
        else:
            public.write_text(torn)
        key = ensure_operator_key("", state_dir)
        assert key.public_line.split()[:2] == expected.split()[:2], torn
        assert public.read_text().split()[:2] == expected.split()[:2]
    assert ensure_operator_key("", state_dir).public_line == first.public_line


def test_a_reader_waits_for_the_writer_holding_the_lock(tmp_path: Path) -> None:
    import fcntl

    state_dir = tmp_path / "state"
    written = ensure_operator_key("", state_dir)
    public = state_dir / "id_ed25519.pub"
    public.write_text("")  # the writer has opened the file, not yet written it
    results: list[OperatorKey] = []
    with open(state_dir / "id_ed25519.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        reader = threading.Thread(target=lambda: results.append(
            ensure_operator_key("", state_dir)))
        reader.start()
        reader.join(0.3)
        assert reader.is_alive() and results == []  # blocked on the lock, not reading ""
        public.write_text(written.public_line + "\n")
    reader.join(5)
    assert results == [written]
