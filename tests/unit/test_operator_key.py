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
