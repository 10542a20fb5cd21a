"""Parse /proc/mdstat: which md arrays exist, which disks are their members, which are degraded."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

# "md0 : active raid1 sdb1[1] sda1[0](F)"
ARRAY_LINE = re.compile(r"^(?P<name>md\S*)\s*:\s*(?P<state>\S+)\s+(?:\((?P<ro>[^)]*)\)\s+)?"
                        r"(?P<level>raid\d+|linear|multipath)?\s*(?P<members>.*)$")
MEMBER = re.compile(r"^(?P<device>[^\[\s]+)\[(?P<slot>\d+)\](?P<flags>(?:\([A-Z]\))*)$")
# "      1048512 blocks super 1.2 [2/1] [U_]"
STATUS = re.compile(r"\[(?P<wanted>\d+)/(?P<working>\d+)\]\s+\[(?P<map>[U_]+)\]")


@dataclass(frozen=True)
class MdArray:
    name: str
    level: str
    state: str
    members: tuple[str, ...]  # partition or disk names as the kernel lists them (sda1, nvme0n1p2)
    failed: tuple[str, ...] = ()
    wanted: int = 0
    working: int = 0
    map: str = ""
    recovering: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def degraded(self) -> bool:
        return bool(self.failed) or (self.wanted > 0 and self.working < self.wanted)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name, "level": self.level, "state": self.state,
            "members": list(self.members), "failed": list(self.failed),
            "wanted": self.wanted, "working": self.working, "map": self.map,
            "recovering": self.recovering, "degraded": self.degraded,
        }


def parse_mdstat(text: str) -> list[MdArray]:
    """Given the text of /proc/mdstat, return its arrays in order."""
    arrays: list[MdArray] = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        match = ARRAY_LINE.match(line)
        if not match:
            continue
        members: list[str] = []
        failed: list[str] = []
        for token in match.group("members").split():
            member = MEMBER.match(token)
            if not member:
                continue
            members.append(member.group("device"))
            if "(F)" in member.group("flags"):
                failed.append(member.group("device"))
        wanted = working = 0
        status_map = ""
        recovering = False
        # The status lines follow the array line until the next blank line.
        for follow in lines[index + 1:index + 4]:
            if not follow.strip():
                break
            status = STATUS.search(follow)
            if status:
                wanted, working = int(status.group("wanted")), int(status.group("working"))
                status_map = status.group("map")
            if "recovery" in follow or "resync" in follow or "reshape" in follow:
                recovering = True
        arrays.append(MdArray(
            name=match.group("name"), level=match.group("level") or "", state=match.group("state"),
            members=tuple(members), failed=tuple(failed), wanted=wanted, working=working,
            map=status_map, recovering=recovering,
        ))
    return arrays


def read_mdstat(path: str | Path) -> list[MdArray]:
    """Arrays from `path`; none when the file does not exist (no md driver loaded)."""
    try:
        return parse_mdstat(Path(path).read_text())
    except FileNotFoundError:
        return []


def disk_of(member: str) -> str:
    """The whole disk behind a member name: sda1 → sda, nvme0n1p2 → nvme0n1, sdb → sdb."""
    nvme = re.match(r"^(nvme\d+n\d+)(p\d+)?$", member)
    if nvme:
        return nvme.group(1)
    return re.sub(r"(?<=[a-z])\d+$", "", member)


def controller_of(disk: str) -> str:
    """smartctl --scan names NVMe controllers (nvme0) while md names namespaces (nvme0n1)."""
    nvme = re.match(r"^(nvme\d+)n\d+$", disk)
    return nvme.group(1) if nvme else disk
