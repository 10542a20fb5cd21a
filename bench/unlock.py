"""From a node's Dropbear answering to its sshd answering: unlockd next to a person.

    sudo .venv/bin/python bench/unlock.py [--node fsn-1] [--interval 15] [--keep]

Provisions NODE of the lab fleet in a throw-away fleet state (the image cache is shared; with
`--state-dir DIR` a node already deployed there is used as it is and kept), then power-cycles
its VM twice behind clonefleet's back (the provider's power off and on, no expected reboot
recorded):

1. a person who is awake: the moment Dropbear answers with the pinned key, `clonefleet
   unlock NODE` runs;
2. `clonefleet unlockd --interval N` runs as a process (policy "immediate", the default);
   nobody else does anything.

Each time, the seconds from Dropbear answering with its pinned key to sshd answering with its
pinned key (both polled every 0.5 s with the key exchange alone), and the ratio unlockd ÷
person: what the service costs over an operator at the keyboard (its polling interval and
probe), which is what it saves over an operator who is asleep.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clonefleet import nodefacts  # noqa: E402
from clonefleet.cli import configure_logging  # noqa: E402
from clonefleet.inventory import load_fleet  # noqa: E402
from clonefleet.known_hosts import public_key_blob  # noqa: E402
from clonefleet.liveprobe import presented_host_key  # noqa: E402
from clonefleet.providers.base import SshAccess  # noqa: E402
from clonefleet.providers.lab import LabProvider  # noqa: E402
from clonefleet.state import open_store  # noqa: E402

WAIT = 1800.0  # seconds for a boot step on a slow TCG guest


def clonefleet(fleet: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "clonefleet", "--fleet", str(fleet), *args]


def first_seen(access: SshAccess, pinned: str, what: str, started: float,
               helper: subprocess.Popen[bytes] | None = None) -> float:
    """Poll until `access` presents `pinned`; the monotonic time it was first seen. Stops
    at once if `helper` (the person's `clonefleet unlock`) failed meanwhile."""
    while True:
        presented = presented_host_key(access, timeout=2.0, prefer="ssh-ed25519")
        if presented is not None and public_key_blob(presented) == pinned:
            return time.monotonic()
        if helper is not None and helper.poll() not in (None, 0):
            error = helper.stderr.read().decode(errors="replace") if helper.stderr else ""
            raise SystemExit(f"bench: `clonefleet unlock` exited {helper.returncode}: "
                             f"{error.strip()[-400:]}")
        if time.monotonic() - started > WAIT:
            raise SystemExit(f"bench: {what} did not answer with its pinned key in {WAIT:.0f} s")
        time.sleep(0.5)


def one_reboot(fleet_path: Path, node_name: str, state_dir: Path,
               while_waiting: Callable[[], subprocess.Popen[bytes] | None]) -> float:
    """Power-cycle the node; `while_waiting()` runs the moment Dropbear answers (a person)
    or does nothing (unlockd is already running). Seconds from Dropbear to sshd."""
    fleet = load_fleet(fleet_path)
    node = fleet.node(node_name)
    facts = nodefacts.load(open_store(state_dir, fleet.state), node_name)
    provider = LabProvider(state_dir, log=lambda message: None)
    provider.power_off(node)
    provider.boot_disk(node)
    started = time.monotonic()
    dropbear = first_seen(facts.require_unlock(), public_key_blob(str(facts.dropbear_host_key)),
                          f"{node_name}'s Dropbear", started)
    helper = while_waiting()
    sshd = first_seen(facts.require_ssh(), public_key_blob(str(facts.ssh_host_key)),
                      f"{node_name}'s sshd", dropbear, helper)
    if helper is not None and helper.wait(WAIT) != 0:
        raise SystemExit(f"bench: clonefleet unlock {node_name} exited {helper.returncode}")
    return sshd - dropbear


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--node", default="fsn-1")
    parser.add_argument("--fleet", default=str(ROOT / "inventory" / "lab.toml"))
    parser.add_argument("--interval", type=float, default=15.0,
                        help="unlockd's seconds between passes (its default: 15)")
    parser.add_argument("--state-dir", help="a fleet state folder whose NODE is deployed "
                                            "already (used as it is, kept; its keystore's "
                                            "age identity from CLONEFLEET_AGE_KEY, or the "
                                            "folder's age.key)")
    parser.add_argument("--keep", action="store_true", help="keep the provisioned VM")
    arguments = parser.parse_args()
    # As the CLI does: the polls below meet many connections that fail during the banner,
    # and paramiko would print a traceback for each.
    configure_logging(0)
    fleet_path = Path(arguments.fleet).resolve()
    fleet = load_fleet(fleet_path)
    node = arguments.node

    folder = tempfile.mkdtemp(prefix="clonefleet-bench-")
    try:
        if arguments.state_dir:
            os.environ["CLONEFLEET_STATE_DIR"] = arguments.state_dir
            own_key = Path(arguments.state_dir) / "age.key"
            if "CLONEFLEET_AGE_KEY" not in os.environ and own_key.exists():
                os.environ["CLONEFLEET_AGE_KEY"] = str(own_key)  # as bench/provision.py keeps
        else:
            os.environ["CLONEFLEET_STATE_DIR"] = folder
            os.environ["CLONEFLEET_AGE_KEY"] = str(Path(folder) / "age.key")
        state_dir = Path(os.environ["CLONEFLEET_STATE_DIR"]) / fleet.name
        provisioned = False
        try:
            record = open_store(state_dir, fleet.state).get(node)
            if record is None or record.state not in ("deployed", "active", "drained"):
                print(f"provisioning {node} (not measured) ...", flush=True)
                subprocess.run(clonefleet(fleet_path, "provision", node), check=True,
                               cwd=ROOT, stdout=subprocess.DEVNULL)
                provisioned = True
            log = Path(folder) / "unlockd.log"

            def person() -> subprocess.Popen[bytes]:
                return subprocess.Popen(clonefleet(fleet_path, "unlock", node), cwd=ROOT,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

            by_person = one_reboot(fleet_path, node, state_dir, person)
            print(f"person running `clonefleet unlock` at once: {by_person:7.1f} s "
                  "from Dropbear to sshd", flush=True)
            with log.open("wb") as output:
                unlockd = subprocess.Popen(
                    clonefleet(fleet_path, "unlockd", "--interval", str(arguments.interval),
                               "--confirm-timeout", str(WAIT)),
                    cwd=ROOT, stdout=output, stderr=output)
                try:
                    by_unlockd = one_reboot(fleet_path, node, state_dir, lambda: None)
                finally:
                    unlockd.terminate()
                    unlockd.wait(60)
            print(f"unlockd (--interval {arguments.interval:g}):            "
                  f"{by_unlockd:7.1f} s from Dropbear to sshd", flush=True)
            print(f"ratio unlockd / person = {by_unlockd / by_person:.2f} "
                  f"(+{by_unlockd - by_person:.1f} s)")
        finally:
            if provisioned and not arguments.keep:
                LabProvider(state_dir, log=lambda message: None).delete(node)
    finally:
        if arguments.keep and not arguments.state_dir:
            print(f"kept: {node}, its fleet state under {folder} (CLONEFLEET_STATE_DIR)")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
