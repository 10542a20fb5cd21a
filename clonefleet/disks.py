"""Fleet-wide disk health: run `smartwatch check --json --report-only` on every node over SSH
(host keys pinned as everywhere else) and put the answers in one table, worst first.

`--report-only` reads and judges without alerting, draining, starting self-tests or touching
the agent's history, so looking never changes what the hourly check will do.

A node that was never provisioned has no agent to ask: it is listed as `not-provisioned`, not
as a failure. A node whose agent can read no disk gets a row of its own (a warning), so
"watching nothing" never looks like "all disks fine".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clonefleet import nodefacts
from clonefleet.errors import ClonefleetError
from clonefleet.inventory import Fleet
from clonefleet.known_hosts import KnownHosts, fleet_known_hosts
from clonefleet.paths import fleet_state_dir
from clonefleet.providers.base import SshAccess
from clonefleet.ssh import RemoteShell, wait_for_ssh
from clonefleet.state import StateStore

COMMAND = "smartwatch check --json --report-only"
NOT_PROVISIONED = "not-provisioned"
SEVERITY_ORDER = {"critical": 0, "unreachable": 1, "warning": 2, "ok": 3, NOT_PROVISIONED: 4}
# Lifecycle states before the install finished: the node has no agent yet.
BEFORE_INSTALL = ("ordered", "rescue", "installed")


@dataclass
class NodeDisks:
    node: str
    status: str  # ok | warning | critical | unreachable | not-provisioned
    disks: list[dict[str, Any]] = field(default_factory=list)
    arrays: list[dict[str, Any]] = field(default_factory=list)
    # Findings about the node rather than one disk, e.g. "no SMART-capable disk".
    node_findings: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    checked_at: float | None = None


# (node, its sshd address, the fleet's known_hosts holding its pinned key) -> a session
Connect = Callable[[str, SshAccess, Path], RemoteShell]


def _connect(key_path: Path) -> Connect:
    def connect(node: str, access: SshAccess, known_hosts: Path) -> RemoteShell:
        # A short deadline: a node that is down is reported, not waited for.
        return wait_for_ssh(lambda: RemoteShell(access, key_path, known_hosts=known_hosts,
                                                what=f"node {node}", timeout=20),
                            CONNECT_DEADLINE, f"node {node}")
    return connect


CONNECT_DEADLINE = 30.0


def gather_node(fleet: Fleet, store: StateStore, node: str, connect: Connect,
                command: str = COMMAND, timeout: float = 300,
                known_hosts: KnownHosts | None = None) -> NodeDisks:
    """Run the agent's report on one node; any failure becomes an `unreachable` answer."""
    fleet.node(node)
    record = store.get(node)
    if record is None or record.state in BEFORE_INSTALL:
        state = "never provisioned" if record is None else f"provisioning not finished " \
            f"(state {record.state})"
        return NodeDisks(node, NOT_PROVISIONED,
                         error=f"{state}: run `clonefleet provision {node}`")
    pins = known_hosts or fleet_known_hosts(fleet_state_dir(fleet.name))
    try:
        facts = nodefacts.load_pinned(store, node, pins)
        if facts.ssh is None:
            return NodeDisks(node, "unreachable", error="no SSH address recorded although the "
                             f"node is {record.state}")
        with connect(node, facts.ssh, pins.path) as shell:
            status, out, err = shell.run(command, check=False, timeout=timeout)
    except ClonefleetError as error:
        return NodeDisks(node, "unreachable", error=str(error))
    try:
        report = json.loads(out)
    except ValueError:
        tail = (err or out).strip().splitlines()[-1:] or [f"exit status {status}"]
        return NodeDisks(node, "unreachable", error=f"smartwatch failed: {tail[0]}")
    return NodeDisks(node, str(report.get("status", "ok")), list(report.get("disks", [])),
                     list(report.get("arrays", [])), list(report.get("node_findings", [])),
                     checked_at=report.get("checked_at"))


def gather(fleet: Fleet, store: StateStore, key_path: Path, nodes: list[str] | None = None, *,
           command: str = COMMAND, parallel: int = 8, timeout: float = 300,
           connect: Connect | None = None,
           known_hosts: KnownHosts | None = None) -> list[NodeDisks]:
    """Given the fleet, return every node's disk report (in parallel, `parallel` at a time).
    Host keys are checked against `known_hosts` (default: the fleet's, in its state folder)."""
    names = nodes or sorted(fleet.nodes)
    connector = connect or _connect(key_path)
    pins = known_hosts or fleet_known_hosts(fleet_state_dir(fleet.name))
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(names)))) as pool:
        return list(pool.map(
            lambda name: gather_node(fleet, store, name, connector, command, timeout, pins),
            names))


def rows(reports: list[NodeDisks]) -> list[dict[str, Any]]:
    """One row per disk (and per unreachable node), worst first, then by node and device."""
    table: list[dict[str, Any]] = []
    for report in reports:
        if report.status in ("unreachable", NOT_PROVISIONED):
            table.append(_node_row(report.node, report.status, report.error))
            continue
        for finding in report.node_findings:
            table.append(_node_row(report.node, str(finding.get("severity", "warning")),
                                   str(finding.get("reason", ""))))
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


def _node_row(node: str, status: str, finding: str) -> dict[str, Any]:
    return {"node": node, "status": status, "device": "", "model": "", "serial": "",
            "temperature": None, "power_on_hours": None, "findings": [finding]}
