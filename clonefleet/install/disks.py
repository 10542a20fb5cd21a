"""Find the inventory's disks in a rescue system by serial, never by kernel name order."""

from __future__ import annotations

import json
from dataclasses import dataclass

from clonefleet.errors import InstallError


@dataclass(frozen=True)
class FoundDisk:
    name: str  # kernel name, only for messages
    serial: str
    size: str
    by_id: str  # /dev/disk/by-id/... path used for every write


def parse_lsblk(text: str) -> list[dict[str, str]]:
    data = json.loads(text)
    return [{key: (value or "") for key, value in device.items()}
            for device in data.get("blockdevices", [])]


def match_disks(expected: tuple[str, ...], lsblk_json: str, by_id_listing: str,
                node: str) -> list[FoundDisk]:
    """Given the inventory serials and the rescue's lsblk/by-id view, return the disks.

    Refuses (InstallError) when any expected disk is missing or ambiguous, so a wrong
    server or a swapped disk is never wiped.
    """
    devices = [device for device in parse_lsblk(lsblk_json) if device.get("type") == "disk"]
    links: dict[str, list[str]] = {}
    for line in by_id_listing.split():
        name, _, target = line.partition("=")
        if "-part" in name or not target:
            continue
        links.setdefault(target.rsplit("/", 1)[-1], []).append(name)
    found = []
    for serial in expected:
        matches = [device for device in devices if device.get("serial", "").strip() == serial]
        if len(matches) != 1:
            seen = ", ".join(f"{d['name']}={d.get('serial') or '?'}" for d in devices) or "none"
            problem = "not found" if not matches else "found more than once"
            raise InstallError(
                f"node {node}: disk with serial {serial!r} {problem} in the rescue system "
                f"(disks there: {seen}); refusing to wipe anything. Check that this is the "
                "right server, or fix the node's disks in the fleet file")
        device = matches[0]
        candidates = sorted(links.get(device["name"], []), key=lambda link: (
            serial not in link, not link.startswith(("nvme-", "ata-", "scsi-", "virtio-")),
            len(link)))
        if not candidates:
            raise InstallError(f"node {node}: disk {device['name']} ({serial}) has no "
                               "/dev/disk/by-id link; the rescue system's udev is not ready")
        found.append(FoundDisk(name=device["name"], serial=serial, size=device.get("size", ""),
                               by_id=f"/dev/disk/by-id/{candidates[0]}"))
    return found
