"""Findings about the node as a whole.

A node whose agent can read no disk watches nothing: without a finding of its own it would
report "ok" exactly like a node whose disks are all fine (a lab VM with virtio disks, a
RAID controller hiding its disks, a missing `-d` option). It is a warning that names the
block devices the kernel shows, so an operator can tell which disks go unwatched.
"""

from __future__ import annotations

from pathlib import Path

from smartwatch.collect import DiskReading
from smartwatch.policy import WARNING, Finding

# Kernel block devices that are never physical disks.
NOT_DISKS = ("loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd", "zd")
NO_SMART_DISK = "no_smart_disk"


def block_devices(sys_block: str | Path = "/sys/block") -> list[str]:
    """The kernel's disks (names under /sys/block), without loop, RAM, dm, md and optical."""
    try:
        names = sorted(entry.name for entry in Path(sys_block).iterdir())
    except OSError:
        return []
    return [name for name in names if not name.startswith(NOT_DISKS)]


def no_smart_disk(node: str, readings: list[DiskReading],
                  sys_block: str | Path = "/sys/block") -> Finding | None:
    """A warning when no reading is of a disk that answered SMART; None otherwise."""
    if any(reading.smart_capable and not reading.error for reading in readings):
        return None
    seen = ", ".join(block_devices(sys_block)) or "none"
    tried = ", ".join(f"{reading.device} ({reading.error or 'no SMART support'})"
                      for reading in readings)
    return Finding(
        key=f"{node}:{NO_SMART_DISK}", disk=node, check=NO_SMART_DISK, severity=WARNING,
        reason=(f"no SMART-capable disk: block devices seen: {seen}; smartctl "
                f"{'could read none of ' + tried if tried else 'found no disk'}. "
                "Failures of these disks go unnoticed."),
        source="node")
