"""Provision lab nodes from blank disks and print where the time goes.

    sudo .venv/bin/python bench/provision.py [--node fsn-1] [--many 2,3] [--keep STATE_DIR]

First one node alone: each step's duration, then the ratio of its total (wall time) to the
sum of the parts no installer can avoid: booting the rescue system, copying the image, and
the reboot (power-on to Dropbear, then unlock to sshd). 1.00 would mean clonefleet adds
nothing on top. Then, for each count in --many, that many nodes like it provisioned with one
command (`FleetRun`, as `clonefleet provision A B ...` does), and the ratio of that wall time
to the single node's: 1.00 would mean N nodes cost no more than one. All in one run, each
in a throw-away fleet state (the image cache is shared; a first run also builds it, which
is reported separately and not counted).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clonefleet.deploy import describe_timings  # noqa: E402
from clonefleet.provision import ProvisionReport  # noqa: E402

# Nodes of the --many runs: lab VMs like the measured node, one disk, BIOS.
MANY_FLEET = """
[fleet]
name = "bench"
domain = "bench.clonefleet.test"
ssh_key = ""
allowed_tcp_ports = [22]

[regions.lab]
provider = "lab"
location = "Falkenstein, DE"
latitude = 50.47
longitude = 12.37
"""
MANY_NODE = """
[nodes.bench-{index}]
region = "lab"
disks = ["CFLAB-BENCH{index}-A"]
memory_mb = 2048
disk_size_gb = 8
ipv4 = "192.0.2.{address}"
"""


def one_node(fleet_path: Path, node: str, keep: bool = False) -> tuple[float, ProvisionReport]:
    """(image seconds, the report) of provisioning `node` alone (left running with `keep`)."""
    from clonefleet.image import ensure_base_image
    from clonefleet.inventory import load_fleet
    from clonefleet.keystore import Keystore
    from clonefleet.lab.rescue import ensure_rescue
    from clonefleet.paths import cache_dir, fleet_state_dir
    from clonefleet.providers.lab import LabProvider
    from clonefleet.provision import Provisioner
    from clonefleet.state import open_store

    started = time.monotonic()
    ensure_rescue(ensure_base_image(cache_dir(), lambda message: None), lambda message: None)
    image_seconds = time.monotonic() - started

    fleet = load_fleet(fleet_path)
    state_dir = fleet_state_dir(fleet.name)
    provider = LabProvider(state_dir, log=lambda message: None)
    provisioner = Provisioner(fleet, open_store(state_dir, fleet.state), state_dir, provider,
                              Keystore(state_dir / "keystore"), log=lambda message: None)
    try:
        report = provisioner.provision(node)
    finally:
        if not keep:
            provider.delete(node)
    return image_seconds, report


def many_nodes(count: int, folder: Path) -> float:
    """Wall seconds of provisioning `count` lab nodes with one FleetRun."""
    from clonefleet.fleetrun import FleetRun
    from clonefleet.inventory import load_fleet
    from clonefleet.paths import fleet_state_dir
    from clonefleet.providers.lab import LabProvider
    from clonefleet.state import open_store

    path = folder / f"bench-{count}.toml"
    path.write_text(MANY_FLEET + "".join(MANY_NODE.format(index=index, address=100 + index)
                                         for index in range(1, count + 1)))
    fleet = load_fleet(path)
    state_dir = fleet_state_dir(fleet.name)
    run = FleetRun(fleet, open_store(state_dir, fleet.state), state_dir, parallel=count)
    try:
        result = run.provision(sorted(fleet.nodes))
    finally:
        provider = LabProvider(state_dir, log=lambda message: None)
        for server in provider.list():
            provider.delete(server.node)
    failed = [(outcome.node, outcome.message) for outcome in result.outcomes if not outcome.ok]
    if failed:
        raise SystemExit(f"bench: {count} nodes at once: failed {failed}")
    return result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--node", default="fsn-1")
    parser.add_argument("--fleet", default=str(ROOT / "inventory" / "lab.toml"))
    parser.add_argument("--many", default="",
                        help="comma-separated node counts to provision at once, e.g. 2,3")
    parser.add_argument("--keep", metavar="STATE_DIR",
                        help="provision the single node with this state folder (new or empty) "
                             "and leave it running, e.g. for bench/hardening.py")
    arguments = parser.parse_args()
    counts = [int(text) for text in arguments.many.split(",") if text.strip()]

    with contextlib.ExitStack() as stack:
        folder = arguments.keep or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="clonefleet-bench-"))
        os.environ["CLONEFLEET_STATE_DIR"] = folder
        os.environ["CLONEFLEET_AGE_KEY"] = str(Path(folder) / "age.key")
        image_seconds, report = one_node(Path(arguments.fleet), arguments.node,
                                         keep=bool(arguments.keep))
    if arguments.keep:
        print(f"{arguments.node} left running; e.g. CLONEFLEET_STATE_DIR={arguments.keep} "
              f"CLONEFLEET_AGE_KEY={arguments.keep}/age.key .venv/bin/python "
              f"bench/hardening.py --fleet {arguments.fleet} --node {arguments.node}")
    steps_list, total = report.steps, report.total_seconds
    steps = dict(steps_list)
    print(f"image and rescue system ready in {image_seconds:.1f} s (cached after the first run;"
          " not counted)")
    print(f"{'step':<24}{'seconds':>9}")
    for step, seconds in steps_list:
        print(f"{step:<24}{seconds:9.1f}")
    unavoidable = {"rescue boot": steps["boot rescue"], "image copy": steps["  copy image"],
                   "reboot (to Dropbear)": steps["boot from disk"],
                   "reboot (unlock to sshd)": steps["unlock"]}
    floor = sum(unavoidable.values())
    # Wall time: steps that overlap (the node layer is built while the rescue boots) count once.
    print(f"{'total (wall)':<24}{total:9.1f}")
    print("unavoidable: " + ", ".join(f"{name} {value:.1f} s"
                                      for name, value in unavoidable.items()))
    print(f"ratio total / unavoidable = {total / floor:.2f}")
    if report.deploy_timings:
        print(f"deploy: {describe_timings(report.deploy_timings)}")
        for name, seconds in report.deploy_timings["slowest"]:
            print(f"  {seconds:7.1f} s  {name}")
        # After the bake only what needs the running node should change; each change makes
        # the operations after it read the node again (clonefleet/deploy_facts.py).
        print(f"deploy changed {len(report.deploy_changes)}: "
              + "; ".join(report.deploy_changes))

    for count in counts:
        with tempfile.TemporaryDirectory(prefix="clonefleet-bench-") as folder:
            os.environ["CLONEFLEET_STATE_DIR"] = folder
            os.environ["CLONEFLEET_AGE_KEY"] = str(Path(folder) / "age.key")
            wall = many_nodes(count, Path(folder))
        print(f"{count} nodes at once: {wall:.1f} s wall, ratio to one node = "
              f"{wall / total:.2f}")


if __name__ == "__main__":
    main()
