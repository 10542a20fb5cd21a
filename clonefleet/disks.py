"""Fleet-wide disk health: run `smartwatch check --json --report-only` on every node over SSH
(host keys pinned as everywhere else) and put the answers in one table, worst first.

`--report-only` reads and judges without alerting, draining, starting self-tests or touching
the agent's history, so looking never changes what the hourly check will do.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clonefleet.errors import ClonefleetError
from clonefleet.inventory import Fleet
from clonefleet.providers.base import SshAccess
from clonefleet.ssh import RemoteShell
from clonefleet.state import StateStore

COMMAND = "smartwatch check --json --report-only"
SEVERITY_ORDER = {"critical": 0, "unreachable": 1, "warning": 2, "ok": 3}


@dataclass
class NodeDisks:
    node: str
    status: str  # ok | warning | critical | unreachable
    disks: list[dict[str, Any]] = field(default_factory=list)
    arrays: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    checked_at: float | None = None


Connect = Callable[[str, SshAccess, str | None], RemoteShell]


def _connect(key_path: Path) -> Connect:
    def connect(node: str, access: SshAccess, pinned: str | None) -> RemoteShell:
        return RemoteShell(access, key_path, pinned=pinned, what=f"node {node}", timeout=20)
    return connect


def gather_node(fleet: Fleet, store: StateStore, node: str, connect: Connect,
                command: str = COMMAND, timeout: float = 300) -> NodeDisks:
    """Run the agent's report on one node; any failure becomes an `unreachable` answer."""
    fleet.node(node)
    access = store.get_fact(node, "ssh")
    if not access:
        return NodeDisks(node, "unreachable", error="no SSH address recorded (not installed?)")
    pinned = store.get_fact(node, "ssh_host_key")
    try:
        with connect(node, SshAccess(access["host"], int(access["port"])), pinned) as shell:
            status, out, err = shell.run(command, check=False, timeout=timeout)
    except ClonefleetError as error:
        return NodeDisks(node, "unreachable", error=str(error))
    try:
        report = json.loads(out)
    except ValueError:
        tail = (err or out).strip().splitlines()[-1:] or [f"exit status {status}"]
        return NodeDisks(node, "unreachable", error=f"smartwatch failed: {tail[0]}")
    return NodeDisks(node, str(report.get("status", "ok")), list(report.get("disks", [])),
                     list(report.get("arrays", [])), checked_at=report.get("checked_at"))


def gather(fleet: Fleet, store: StateStore, key_path: Path, nodes: list[str] | None = None, *,
           command: str = COMMAND, parallel: int = 8, timeout: float = 300,
           connect: Connect | None = None) -> list[NodeDisks]:
    """Given the fleet, return every node's disk report (in parallel, `parallel` at a time)."""
    names = nodes or sorted(fleet.nodes)
    connector = connect or _connect(key_path)
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(names)))) as pool:
        return list(pool.map(
            lambda name: gather_node(fleet, store, name, connector, command, timeout), names))


def rows(reports: list[NodeDisks]) -> list[dict[str, Any]]:
    """One row per disk (and per unreachable node), worst first, then by node and device."""
    table: list[dict[str, Any]] = []
    for report in reports:
        if report.status == "unreachable":
            table.append({"node": report.node, "status": "unreachable", "device": "",
                          "model": "", "serial": "", "temperature": None,
                          "power_on_hours": None, "findings": [report.error]})
            continue
        for disk in report.disks:
            table.append({
                "node": report.node, "status": disk.get("status", "ok"),
                "device": disk.get("device", ""), "model": disk.get("model", ""),
                "serial": disk.get("serial", ""), "temperature": disk.get("temperature"),
                "power_on_hours": disk.get("power_on_hours"),
                "findings": [finding["reason"] for finding in disk.get("findings", [])],
            })
        for array in report.arrays:
            if array.get("degraded"):
                table.append({"node": report.node, "status": "warning",
                              "device": f"/dev/{array['name']}", "model": array.get("level"),
                              "serial": "", "temperature": None, "power_on_hours": None,
                              "findings": [f"RAID array {array['name']} is degraded "
                                           f"[{array.get('map', '')}]"]})
    table.sort(key=lambda row: (SEVERITY_ORDER.get(row["status"], 9), row["node"],
                                row["device"]))
    return table
