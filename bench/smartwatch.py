"""Peak memory and CPU time of one `smartwatch check` on a node with 2 and with 24 disks.

Runs the agent's full check (collection, policy, history, metrics; apprise loaded because an
alert URL is configured) in a fresh process per size against replayed smartctl outputs, and
reports the agent process's own peak RSS and CPU time. The replay program stands in for
smartctl; its cost is reported separately because real smartctl is a small C program.

    .venv/bin/python bench/smartwatch.py
"""

from __future__ import annotations

import json
import string
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORDINGS = ROOT / "tests" / "smartwatch" / "fixtures" / "recordings"

MEASURE = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
started = time.perf_counter()
from smartwatch.agent import run_check
from smartwatch.config import load_config
result = run_check(load_config({config!r}))
wall = time.perf_counter() - started
me = resource.getrusage(resource.RUSAGE_SELF)
children = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({{"disks": len(result.readings), "status": result.status, "wall": wall,
                   "cpu": me.ru_utime + me.ru_stime, "peak_rss_kib": me.ru_maxrss,
                   "smartctl_cpu": children.ru_utime + children.ru_stime}}))
"""

# A replay smartctl in sh: `cat` of the recording named after the arguments.
REPLAY = """#!/bin/sh
name="_$(printf '%s_' "$@" | sed 's/_$//' | tr '/' '_')"
[ -f "{folder}/$name" ] || exit 2
cat "{folder}/$name"
"""


def machine(folder: Path, disks: int, failing: bool = False) -> Path:
    """A recordings folder with `disks` disks: NVMe for every sixth, SATA HDD/SSD otherwise;
    with `failing`, the first disk's latest self-test failed (so an alert goes out)."""
    folder.mkdir(parents=True)
    scan = []
    hdd = (RECORDINGS / "healthy_sata_hdd" / "_-d_sat_--all__dev_sda").read_text()
    broken = (RECORDINGS / "failed_selftest" / "_-d_sat_--all__dev_sda").read_text()
    ssd = (RECORDINGS / "healthy_sata_ssd" / "_-d_sat_--all__dev_sda").read_text()
    nvme = (RECORDINGS / "healthy_nvme" / "_-d_nvme_--all__dev_nvme0").read_text()
    letters = iter(string.ascii_lowercase)
    nvme_count = 0
    for index in range(disks):
        if index % 6 == 5:
            device, kind, text = f"/dev/nvme{nvme_count}", "nvme", nvme
            nvme_count += 1
        else:
            device, kind = f"/dev/sd{next(letters)}", "sat"
            text = hdd if index % 2 == 0 else ssd
            if failing and index == 0:
                text = broken
        # Every disk gets its own serial, as on a real node.
        text = text.replace("WS10SM2A", f"WS10SM{index:02d}").replace(
            "LKC125R001176", f"LKC125R0011{index:02d}").replace(
            "C91LD1N40ANA03637", f"C91LD1N40ANA036{index:02d}")
        scan.append(f"{device} -d {kind} # {device}, disk")
        (folder / ("_-d_" + kind + "_--all_" + device.replace("/", "_"))).write_text(text)
    (folder / "_--scan-open").write_text("\n".join(scan) + "\n")
    replay = folder / "smartctl"
    replay.write_text(REPLAY.format(folder=folder))
    replay.chmod(0o755)
    return replay


def measure(disks: int, work: Path, failing: bool = False) -> dict[str, float]:
    name = f"{disks}{'-failing' if failing else ''}"
    smartctl = machine(work / f"disks-{name}", disks, failing)
    config = work / f"config-{name}.toml"
    config.write_text(
        f'node = "bench"\nstate_db = "{work}/state-{name}.sqlite"\nsmartctl = "{smartctl}"\n'
        f'mdstat = "{work}/no-mdstat"\nmetrics_file = "{work}/metrics-{name}.prom"\n'
        # Port 9 on loopback is closed: the alert fails at once, apprise is still loaded.
        '[alerts]\nurls = ["json://127.0.0.1:9/bench"]\n[selftest]\nenabled = false\n'
        '[drain]\nconfirm_delay_seconds = 0\n')
    script = MEASURE.format(root=str(ROOT), config=str(config))
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, check=True)
    result: dict[str, float] = json.loads(output.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="smartwatch-bench-") as temporary:
        work = Path(temporary)
        print(f"{'disks':>5} {'status':>7} {'peak RSS':>10} {'agent CPU':>10} "
              f"{'wall':>7} {'replay CPU':>11}")
        for disks, failing in ((2, False), (24, False), (24, True)):
            result = measure(disks, work, failing)
            assert result["disks"] == disks, result
            print(f"{disks:>5} {result['status']:>7} {result['peak_rss_kib'] / 1024:>8.1f} MiB "
                  f"{result['cpu']:>8.2f} s {result['wall']:>5.2f} s "
                  f"{result['smartctl_cpu']:>9.2f} s")


if __name__ == "__main__":
    main()
