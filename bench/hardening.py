"""Lynis' hardening index of a node: the goal is >= 80 with no warnings (issue 10).

Two ways to measure:

- default: over SSH on a deployed node of a fleet (the fleet's pinned host keys, the
  operator key); installs Debian's `lynis` on the node if missing (from its mirror), runs
  `lynis audit system --quick`, prints the index, the warnings and the suggestions. Slow
  under emulation: a bench, not a CI test.

      .venv/bin/python bench/hardening.py --fleet inventory/lab.toml [--node NODE]

- `--chroot`: no VM. A copy-on-write overlay of the cached node image's root filesystem
  (the cache itself is only read), Debian's `lynis` installed in it from the mirror, Lynis
  run before and after `deploys.hardening:hardening` (through pyinfra's @chroot connector,
  offline), a second deploy run that must change nothing. Prints both indexes and the ratio.
  Runs as root (mounts); everything is unmounted and removed at the end.

      sudo .venv/bin/python bench/hardening.py --chroot [--image ROOTFS]

What a chroot cannot show: Lynis reads the *host's* kernel through /proc and /sys there, so
tests of the running kernel (KRNL-5830), runtime sysctl values (KRNL-6000: the deploy's values
apply at boot), processes and services (LOGG-2130/2138, BOOT-5*, ACCT-9628 auditd), mounts
(FILE-6310/6344/6374), network interfaces and firewall rules judge the host instead. The
booted-node mode is the figure that counts.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from chroot_fixture import ChrootNode, DeployResult, run_deploy

from clonefleet.image.base import (
    HARDENING_PACKAGES,
    SECURITY_SOURCES,
    SUITE,
    image_key,
    security_mirror,
    security_sources,
)
from clonefleet.image.chroot import CHROOT_ENV, in_chroot, mounted, overlay
from clonefleet.paths import cache_dir

GOAL = 80
LYNIS = "lynis audit system --quick --no-colors"
REPORT = "/var/log/lynis-report.dat"
SYSCTL_FILE = "/etc/sysctl.d/99-zz-clonefleet-hardening.conf"  # deploys.hardening.SYSCTL_FILE
# Tests that judge the host, not the image, when Lynis runs in a chroot (see the docstring).
CHROOT_BLIND = ("KRNL-5830", "KRNL-6000", "LOGG-2130", "LOGG-2138", "BOOT-5180", "BOOT-5264",
                "ACCT-9628", "ACCT-9630", "FILE-6310", "FILE-6344", "FILE-6374", "PROC-3612",
                "PROC-3614", "MACF-6290", "NETW-3015", "FIRE-4512")


@dataclass
class LynisReport:
    index: int
    tests: int
    warnings: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)


def parse_report(text: str) -> LynisReport:
    """Given lynis-report.dat, return the index, test count, warnings and suggestions."""
    values: dict[str, str] = {}
    warnings, suggestions = [], []
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "warning[]":
            warnings.append(_finding(value))
        elif key == "suggestion[]":
            suggestions.append(_finding(value))
        else:
            values[key] = value
    return LynisReport(index=int(values.get("hardening_index", "0")),
                       tests=int(values.get("lynis_tests_done", "0")),
                       warnings=warnings, suggestions=suggestions)


def _finding(value: str) -> str:
    parts = value.split("|")
    details = f" ({parts[2]})" if len(parts) > 2 and parts[2] not in ("", "-") else ""
    return f"{parts[0]}: {parts[1] if len(parts) > 1 else ''}{details}"


def show(title: str, report: LynisReport, chroot: bool = False) -> None:
    print(f"\n{title}: hardening index {report.index} ({report.tests} tests), "
          f"{len(report.warnings)} warnings, {len(report.suggestions)} suggestions")
    for kind, items in (("warning", report.warnings), ("suggestion", report.suggestions)):
        for item in items:
            blind = " [judges the host in a chroot]" if chroot and item.split(":")[0] in \
                CHROOT_BLIND else ""
            print(f"  {kind}: {item}{blind}")


# -- chroot mode ------------------------------------------------------------------------------

def find_image(explicit: str | None) -> tuple[Path, str]:
    """The rootfs to measure: the given one, the image of this code, else the newest built."""
    if explicit:
        return Path(explicit), "given"
    images = cache_dir() / "images"
    current = images / f"debian-{SUITE}-{image_key()}" / "rootfs"
    if current.is_dir():
        return current, "current"
    built = sorted((path.parent for path in images.glob(f"debian-{SUITE}-*/image.json")),
                   key=lambda path: path.stat().st_mtime, reverse=True)
    if not built:
        sys.exit(f"no node image under {images}: build one first (any provision does)")
    return built[0] / "rootfs", "older"


def lynis_in_chroot(root: Path) -> tuple[LynisReport, float]:
    started = time.monotonic()
    subprocess.run(["chroot", str(root), "/bin/sh", "-c", LYNIS], capture_output=True,
                   env={**CHROOT_ENV, "TERM": "dumb"}, timeout=1800)
    return parse_report((root / REPORT.lstrip("/")).read_text()), time.monotonic() - started


POINTS = re.compile(r"Currently having (\d+) points \(out of (\d+)\)")
SYSCTL_MISS = re.compile(r"Result: sysctl key (\S+) has a different value than expected in "
                         r"scan profile\. Expected=(\S+), Real=")


def sysctl_at_boot(log: str, sysctl_file: str) -> tuple[int, list[str]]:
    """Lynis' index had the kernel run the values of `sysctl_file`: each KRNL-6000 key Lynis
    found different from its profile (1 point each) counts as met when the file sets the
    expected value. A chroot reads the controller's kernel, the node's is set at boot."""
    matches = POINTS.findall(log)
    if not matches:
        return 0, []
    points, total = (int(value) for value in matches[-1])
    written = {}
    for line in sysctl_file.splitlines():
        key, separator, value = line.partition("=")
        if separator and not line.startswith("#"):
            written[key.strip()] = value.strip()
    met = [key for key, expected in SYSCTL_MISS.findall(log) if written.get(key) == expected]
    return (points + len(met)) * 100 // total, met


def chroot_mode(image: str | None, keep: bool) -> int:
    rootfs, which = find_image(image)
    print(f"image: {rootfs} ({which})")
    work = Path(tempfile.mkdtemp(prefix="clonefleet-hardening-"))
    try:
        with overlay(rootfs, work) as (merged, _upper):
            # The image has no resolver of its own: apt needs the controller's.
            resolv = merged / "etc/resolv.conf"
            resolv.unlink(missing_ok=True)
            resolv.write_text(Path("/etc/resolv.conf").read_text())
            with mounted(merged):
                started = time.monotonic()
                # An image built by older code: bring the overlay to what this code's image
                # holds (security updates, hardening packages), so "before" is today's image.
                upgrade = ""
                security = merged / SECURITY_SOURCES.lstrip("/")
                if not security.exists():
                    print("note: image predates the security suite; upgrading the overlay")
                    security.write_text(security_sources(security_mirror()))
                    upgrade = "apt-get upgrade -y -q && "
                missing = [name for name in HARDENING_PACKAGES
                           if not _installed(merged, name)]
                if missing:
                    print(f"note: image lacks {missing} (built before they were added); "
                          "installing them in the overlay")
                in_chroot(merged, f"apt-get update -q && {upgrade}apt-get install -y -q "
                          f"--no-install-recommends lynis {' '.join(missing)}",
                          what="install lynis", timeout=1800)
                print(f"lynis installed in {time.monotonic() - started:.0f} s")
                before, seconds = lynis_in_chroot(merged)
                print(f"lynis before: {seconds:.0f} s")
                first = hardening_deploy(merged)
                second = hardening_deploy(merged)
                after, seconds = lynis_in_chroot(merged)
                print(f"lynis after: {seconds:.0f} s")
                booted, met = sysctl_at_boot(
                    (merged / "var/log/lynis.log").read_text(errors="replace"),
                    (merged / SYSCTL_FILE.lstrip("/")).read_text())
        show("before (image as built)", before, chroot=True)
        show("after deploys.hardening", after, chroot=True)
        print(f"\ndeploy: first run changed {len(first.changed)} operations, errors "
              f"{first.errors or 'none'}; second run changed {second.changed or 'nothing'}")
        print(f"with the deploy's sysctl values in the kernel (as after a boot): index "
              f"{booted} ({len(met)} more KRNL-6000 keys met: {', '.join(met)})")
        ratio = after.index / before.index if before.index else float("nan")
        print(json.dumps({"index_before": before.index, "index_after": after.index,
                          "ratio": round(ratio, 2), "index_after_sysctl_at_boot": booted,
                          "warnings_after": len(after.warnings),
                          "tests_after": after.tests, "second_run_changes": len(second.changed),
                          "image": which}))
        return 0 if not first.failed and not second.changed else 1
    finally:
        if keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def hardening_deploy(root: Path) -> DeployResult:
    """`deploys.hardening:hardening` on the mounted root, offline (tests/chroot_fixture.py)."""
    node = ChrootNode("image", root, root, {"clonefleet_offline": True})
    return run_deploy([node], "deploys.hardening:hardening")[node.name]


def _installed(root: Path, package: str) -> bool:
    status = (root / "var/lib/dpkg/status").read_text()
    return f"Package: {package}\nStatus: install ok installed" in status


# -- node mode --------------------------------------------------------------------------------

def node_mode(fleet_path: str, node_name: str | None) -> int:
    from clonefleet import nodefacts
    from clonefleet.inventory import load_fleet
    from clonefleet.known_hosts import fleet_known_hosts
    from clonefleet.paths import fleet_state_dir
    from clonefleet.ssh import RemoteShell, ensure_operator_key
    from clonefleet.state import open_store

    fleet = load_fleet(fleet_path)
    state_dir = fleet_state_dir(fleet.name)
    node = fleet.node(node_name).name if node_name else sorted(fleet.nodes)[0]
    known_hosts = fleet_known_hosts(state_dir)
    facts = nodefacts.load_pinned(open_store(state_dir), node, known_hosts)
    key = ensure_operator_key(fleet.ssh_key, state_dir)
    with RemoteShell(facts.require_ssh(), key.path, known_hosts=known_hosts.path,
                     what=f"node {node}", timeout=30) as shell:
        started = time.monotonic()
        shell.run("command -v lynis >/dev/null || (apt-get update -q && "
                  "DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                  "--no-install-recommends lynis)", timeout=1800)
        shell.run(f"TERM=dumb {LYNIS} >/dev/null 2>&1 || true", timeout=3600)
        _status, text, _errors = shell.run(f"cat {REPORT}", timeout=60)
        seconds = time.monotonic() - started
    report = parse_report(text)
    show(f"node {node} ({seconds:.0f} s)", report)
    verdict = report.index >= GOAL and not report.warnings
    print(json.dumps({"node": node, "index": report.index, "tests": report.tests,
                      "warnings": len(report.warnings), "goal_met": verdict}))
    return 0 if verdict else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chroot", action="store_true",
                        help="measure the node image in an overlay chroot, no VM")
    parser.add_argument("--image", help="rootfs folder to measure (default: the cached image)")
    parser.add_argument("--keep", action="store_true", help="keep the overlay's upper layer")
    parser.add_argument("--fleet", default="inventory/lab.toml", help="fleet file (node mode)")
    parser.add_argument("--node", help="node to measure (default: the first of the fleet)")
    args = parser.parse_args()
    if args.chroot:
        return chroot_mode(args.image, args.keep)
    return node_mode(args.fleet, args.node)


if __name__ == "__main__":
    sys.exit(main())
