"""`clonefleet disks` core against a real sshd on a loopback port, host key pinned."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fleet_text import FSN, FleetNode, fleet_toml
from sshd_fixture import Sshd

from clonefleet.disks import gather, rows
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.known_hosts import KnownHosts
from clonefleet.ssh import generate_ed25519
from clonefleet.state import SqliteStateStore

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "smartwatch"))

from smartwatch_replay import ReplayedMachine  # noqa: E402

pytestmark = pytest.mark.integration

FLEET = fleet_toml("disktest", "disktest.clonefleet.test", [FSN],
                   [FleetNode("fsn-1", "fsn", "C91LD1N40ANA03637"),
                    FleetNode("fsn-2", "fsn", "WS10SM2A"), FleetNode("fsn-3", "fsn", "X")])


def node_command(tmp_path: Path, node: str, recording: str) -> str:
    machine = ReplayedMachine(tmp_path / f"machine-{node}").use(recording)
    config = tmp_path / f"{node}.toml"
    config.write_text(f'node = "{node}"\nstate_db = "{tmp_path / node}.sqlite"\n'
                      f'smartctl = "{machine.smartctl}"\nmdstat = "{tmp_path}/none"\n')
    return (f"env PYTHONPATH={ROOT} {sys.executable} -m smartwatch --config {config} "
            "check --json --report-only")


def lab(tmp_path: Path, sshd: Sshd, pinned: str) -> tuple[Fleet, SqliteStateStore]:
    (tmp_path / "disktest.toml").write_text(FLEET)
    fleet = load_fleet(tmp_path / "disktest.toml")
    store = SqliteStateStore(tmp_path / "state.sqlite")
    for node in ("fsn-1", "fsn-2"):
        store.set_state(node, "deployed", actor="test")
        store.set_fact(node, "ssh", {"host": "127.0.0.1", "port": sshd.port})
        store.set_fact(node, "ssh_host_key", pinned)
    return fleet, store


def test_fleet_table_lists_critical_disk_first_and_unreachable_node(
        tmp_path: Path, sshd: Sshd) -> None:
    fleet, store = lab(tmp_path, sshd, sshd.host_key)
    known_hosts = KnownHosts(tmp_path / "known_hosts")
    commands = {"fsn-1": node_command(tmp_path, "fsn-1", "nvme_critical"),
                "fsn-2": node_command(tmp_path, "fsn-2", "healthy_sata_hdd")}
    reports = [
        gather(fleet, store, sshd.client_key, [node], command=commands[node], timeout=60,
               known_hosts=known_hosts)[0]
        for node in ("fsn-2", "fsn-1")
    ] + gather(fleet, store, sshd.client_key, ["fsn-3"], timeout=60, known_hosts=known_hosts)
    table = rows(reports)
    # fsn-3 was never provisioned: listed as such, last, not as a failure.
    assert [(row["status"], row["node"]) for row in table] == [
        ("critical", "fsn-1"), ("ok", "fsn-2"), ("not-provisioned", "fsn-3")]
    assert table[2]["findings"] == ["never provisioned: run `clonefleet provision fsn-3`"]
    assert table[0]["serial"] == "C91LD1N40ANA03637"
    assert any("critical warning bit 2" in finding for finding in table[0]["findings"])
    assert table[1]["model"] == "ST2000NM000A-2J2100"
    # Looking changed nothing on the node: report-only keeps no history.
    assert not (tmp_path / "fsn-1.sqlite").exists()


def test_node_presenting_another_host_key_is_refused(tmp_path: Path, sshd: Sshd) -> None:
    other = generate_ed25519("someone-else").public_line
    fleet, store = lab(tmp_path, sshd, other)
    command = node_command(tmp_path, "fsn-1", "healthy_nvme")
    [report] = gather(fleet, store, sshd.client_key, ["fsn-1"], command=command, timeout=60,
                      known_hosts=KnownHosts(tmp_path / "known_hosts"))
    assert report.status == "unreachable"
    assert "not the key pinned at install time" in report.error
