"""Provision one lab node from blank disks and print where the time goes.

    sudo .venv/bin/python bench/provision.py [--node fsn-1]

Prints each step's duration, then the ratio of the total to the sum of the parts no
installer can avoid: booting the rescue system, copying the image, and the reboot (power-on
to Dropbear, then unlock to sshd). 1.00 would mean clonefleet adds nothing on top. All in
one run, in a throw-away fleet state (the image cache is shared; a first run also builds it,
which is reported separately and not counted).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--node", default="fsn-1")
    parser.add_argument("--fleet", default=str(ROOT / "inventory" / "lab.toml"))
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="clonefleet-bench-") as folder:
        os.environ["CLONEFLEET_STATE_DIR"] = folder
        os.environ["CLONEFLEET_AGE_KEY"] = str(Path(folder) / "age.key")
        from clonefleet.image import ensure_base_image
        from clonefleet.inventory import load_fleet
        from clonefleet.keystore import Keystore
        from clonefleet.lab.rescue import ensure_rescue
        from clonefleet.paths import cache_dir, fleet_state_dir
        from clonefleet.providers.lab import LabProvider
        from clonefleet.provision import Provisioner
        from clonefleet.state import open_store

        started = time.monotonic()
        ensure_rescue(ensure_base_image(cache_dir(), lambda message: None),
                      lambda message: None)
        image_seconds = time.monotonic() - started

        fleet = load_fleet(arguments.fleet)
        state_dir = fleet_state_dir(fleet.name)
        provider = LabProvider(state_dir, log=lambda message: None)
        provisioner = Provisioner(fleet, open_store(state_dir), state_dir, provider,
                                  Keystore(state_dir / "keystore"), log=lambda message: None)
        try:
            report = provisioner.provision(arguments.node)
        finally:
            provider.delete(arguments.node)

    steps = dict(report.steps)
    print(f"image and rescue system ready in {image_seconds:.1f} s (cached after the first run;"
          " not counted)")
    print(f"{'step':<24}{'seconds':>9}")
    for step, seconds in report.steps:
        print(f"{step:<24}{seconds:9.1f}")
    # Wall time: steps that overlap (the node layer is built while the rescue boots) count once.
    total = report.total_seconds
    unavoidable = {"rescue boot": steps["boot rescue"], "image copy": steps["  copy image"],
                   "reboot (to Dropbear)": steps["boot from disk"],
                   "reboot (unlock to sshd)": steps["unlock"]}
    floor = sum(unavoidable.values())
    print(f"{'total':<24}{total:9.1f}")
    print("unavoidable: " + ", ".join(f"{name} {value:.1f} s"
                                      for name, value in unavoidable.items()))
    print(f"ratio total / unavoidable = {total / floor:.2f}")


if __name__ == "__main__":
    main()
