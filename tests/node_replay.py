"""A replayed disk on a real node: the deployed smartwatch agent, run with `smartctl` replaced
by a replay of one recording (tests/smartwatch/fixtures/recordings), as the local smartwatch
tests do. Used by the lab fleet VM test and bench/drain_loop.py.

    with lab.shell(node) as shell:
        install_replay(shell, "nvme_critical")
        code, out, err = shell.run(CHECK, check=False, timeout=600)
"""

from __future__ import annotations

from pathlib import Path

from clonefleet.ssh import RemoteShell

SMARTWATCH_TESTS = Path(__file__).resolve().parent / "smartwatch"
RECORDINGS = SMARTWATCH_TESTS / "fixtures" / "recordings"
FOLDER = "/root/replay"
# The deployed config with the replayed smartctl, no RAID arrays (the recording has none) and
# its own agent state, so each install starts afresh and the node's own agent is left alone.
CONFIG = f"{FOLDER}/smartwatch.toml"
CHECK = f"smartwatch --config {CONFIG} check --json"


def install_replay(shell: RemoteShell, recording: str) -> None:
    """Copy the replay program and `recording` to the node and write a copy of the deployed
    smartwatch config that uses them. Run again to switch recordings."""
    shell.run(f"rm -rf {FOLDER} && install -d -m 700 {FOLDER}/recording")
    for path in sorted((RECORDINGS / recording).iterdir()):
        shell.run(f"cat > {FOLDER}/recording/'{path.name}'", input_data=path.read_bytes())
    shell.run(f"cat > {FOLDER}/fake_smartctl.py",
              input_data=(SMARTWATCH_TESTS / "fake_smartctl.py").read_bytes())
    program = (f"#!/bin/sh\nSMARTWATCH_REPLAY_DIR={FOLDER}/recording "
               f'exec /usr/bin/python3 -S {FOLDER}/fake_smartctl.py "$@"\n')
    shell.run(f"cat > {FOLDER}/smartctl && chmod 755 {FOLDER}/smartctl",
              input_data=program.encode())
    shell.run(f"sed -e 's|^smartctl = .*|smartctl = \"{FOLDER}/smartctl\"|' "
              "-e 's|^mdstat = .*|mdstat = \"/nonexistent\"|' "
              f"-e 's|^state_db = .*|state_db = \"{FOLDER}/state.sqlite\"|' "
              f"/etc/smartwatch/smartwatch.toml > {CONFIG} && chmod 600 {CONFIG}")
