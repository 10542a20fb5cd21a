"""How a no-op rollout's wall time grows with the fleet: N real sshd endpoints on loopback.

    sudo .venv/bin/python bench/rollout.py [--sizes 10,50,200]

Each node is a real OpenSSH server on 127.0.0.1 whose sessions are chrooted into one Debian 12
root (the tests' cached minbase root, under an overlay: the cache is only read) that uses a
signed apt repository on loopback whose security suite has nothing newer than what is
installed. For each N, `clonefleet --json update --no-refresh` runs over a fleet of N active
nodes in two regions: it takes the lock, gathers every node's packages and reboot needs with
pyinfra in parallel, plans, finds nothing to do and releases the lock; the package lists
are left as they are (`--no-refresh`: N nodes sharing one root cannot all run apt-get update
at once). Prints, from one run, the wall time per N, per node, and each size's ratio to the
smallest (linear growth: the ratio equals N ÷ N-smallest).

With `--from-fleet FLEET.toml` it measures instead a real rollout that already ran on that
fleet (the last one, read from its state store; e.g. the lab fleet's after
`tests/vm/test_lab_fleet.py`, or a production fleet's): its orchestration overhead, wall time
÷ the sum of every node's upgrade + reboot (which holds its boot, unlock and sshd's return),
and wall time ÷ the critical path (per batch the slowest node's). See
`clonefleet.rollout.overhead`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from apt_repo_fixture import (  # noqa: E402
    AptRepo,
    Package,
    ensure_debian_root,
    point_root_at,
    sshd_chroot_folder,
)
from sshd_fixture import Sshd  # noqa: E402

from clonefleet.image.chroot import mounted, overlay  # noqa: E402
from clonefleet.inventory import load_fleet  # noqa: E402
from clonefleet.state import open_store  # noqa: E402

INSTALLED = (Package("cf-tool", "1.0"),)
FLEET = """
[fleet]
name = "rollbench"
domain = "rollbench.clonefleet.test"
ssh_key = "{key}"
min_active_total = 1

[regions.fsn]
provider = "lab"
latitude = 50.47
longitude = 12.37
min_active = 1

[regions.ash]
provider = "lab"
latitude = 39.04
longitude = -77.49
min_active = 1
"""
NODE = """
[nodes.n{index:03d}]
region = "{region}"
disks = ["RB-{index:03d}"]
ipv4 = "198.18.{high}.{low}"
"""


def fleet_file(folder: Path, key: Path, count: int) -> Path:
    path = folder / f"inventory-{count}" / "rollbench.toml"
    path.parent.mkdir()
    path.write_text(FLEET.format(key=key) + "".join(
        NODE.format(index=index, region=("fsn", "ash")[index % 2], high=index // 250,
                    low=index % 250 + 1) for index in range(count)))
    return path


def no_op_rollout(folder: Path, key: Path, sshds: list[Sshd], count: int) -> float:
    """Wall seconds of `clonefleet update --no-refresh` over `count` active nodes."""
    path = fleet_file(folder, key, count)
    fleet = load_fleet(path)
    state_root = folder / f"state-{count}"
    store = open_store(state_root / fleet.name)
    for name, sshd in zip(sorted(fleet.nodes), sshds, strict=False):
        store.set_state(name, "active", actor="bench")
        store.set_fact(name, "ssh", {"host": "127.0.0.1", "port": sshd.port})
        store.set_fact(name, "ssh_host_key", sshd.host_key)
    store.close()
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "clonefleet", "--fleet", str(path),
                             "--json", "update", "--no-refresh"], capture_output=True,
                            text=True, timeout=3600, cwd=ROOT, stdin=subprocess.DEVNULL,
                            env={**os.environ, "CLONEFLEET_STATE_DIR": str(state_root)})
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"bench: update over {count} nodes exited {result.returncode}: "
                         f"{result.stderr.strip()[-500:]}")
    report = json.loads(result.stdout)
    results = {node["result"] for node in report["nodes"]}
    if len(report["nodes"]) != count or results != {"skipped"}:
        raise SystemExit(f"bench: not a no-op over {count} nodes: "
                         f"{len(report['nodes'])} nodes, results {sorted(results)}")
    return wall


def print_last_rollout(fleet_path: Path) -> None:
    """The overhead of the last rollout recorded in the fleet's state store."""
    from clonefleet.errors import ClonefleetError
    from clonefleet.inventory import load_fleet
    from clonefleet.paths import fleet_state_dir
    from clonefleet.rollout.overhead import orchestration_overhead
    from clonefleet.rollout.progress import last_run
    from clonefleet.state import open_store

    try:
        fleet = load_fleet(fleet_path)
        store = open_store(fleet_state_dir(fleet.name), fleet.state)
        run, progress = last_run(store, fleet.nodes)
        if run is None:
            raise SystemExit(f"bench: fleet {fleet.name} has no recorded rollout")
        result = orchestration_overhead(run.started_at, progress)
    except ClonefleetError as error:
        raise SystemExit(f"bench: {error}") from None
    print(f"rollout {run.id} on {fleet.name} ({run.status}): batches "
          f"{' → '.join('+'.join(batch) for batch in result.batches)}")
    for node, entry in sorted(progress.items()):
        print(f"  {node}: " + ", ".join(f"{step} {seconds:.1f} s"
                                        for step, seconds in entry.seconds.items()))
    print(f"wall {result.wall:.1f} s; every node's upgrade + reboot, summed: "
          f"{result.work:.1f} s (ratio {result.ratio_to_sum:.2f}); per batch the slowest "
          f"one's, summed: {result.unavoidable:.1f} s; overhead ratio {result.ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10,50,200",
                        help="comma-separated fleet sizes, smallest first")
    parser.add_argument("--from-fleet", type=Path, default=None,
                        help="print the overhead of the last rollout this fleet ran instead")
    arguments = parser.parse_args()
    if arguments.from_fleet is not None:
        print_last_rollout(arguments.from_fleet)
        return
    sizes = sorted(int(text) for text in arguments.sizes.split(",") if text.strip())
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (overlay mounts, chroot, sshd)")

    with ExitStack() as stack, sshd_chroot_folder() as nodes_folder, \
            tempfile.TemporaryDirectory(prefix="clonefleet-bench-") as work:
        folder = Path(work)
        repo = AptRepo(folder / "repo", {"bookworm-security": INSTALLED,
                                         "bookworm-updates": INSTALLED})
        repo.start()
        stack.callback(repo.stop)
        merged, _ = stack.enter_context(overlay(ensure_debian_root(), nodes_folder / "root"))
        stack.enter_context(mounted(merged))
        point_root_at(merged, repo, INSTALLED)
        started = time.monotonic()
        sshds: list[Sshd] = []
        for index in range(sizes[-1]):
            sshd = Sshd(nodes_folder / f"sshd-{index:03d}",
                        extra_config=f"ChrootDirectory {merged}\nMaxStartups 100\n")
            stack.callback(sshd.stop)
            sshds.append(sshd)
        accepted = (sshds[0].client_key.parent / "authorized_keys").read_text()
        for sshd in sshds[1:]:
            (sshd.client_key.parent / "authorized_keys").write_text(accepted)
        key = sshds[0].client_key
        key.with_name(key.name + ".pub").write_text(accepted)
        print(f"{len(sshds)} sshd nodes up in {time.monotonic() - started:.1f} s "
              "(not counted)", flush=True)

        walls = {}
        print(f"{'nodes':>6}{'wall s':>10}{'ms/node':>10}{'ratio':>8}{'ideal':>8}")
        for count in sizes:
            walls[count] = no_op_rollout(folder, key, sshds, count)
            print(f"{count:6d}{walls[count]:10.1f}{1000 * walls[count] / count:10.0f}"
                  f"{walls[count] / walls[sizes[0]]:8.2f}{count / sizes[0]:8.1f}", flush=True)


if __name__ == "__main__":
    main()
