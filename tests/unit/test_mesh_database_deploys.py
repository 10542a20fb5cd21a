"""The mesh and database deploys as pyinfra runs them (the @fake connector: nothing installed,
nothing running): what a primary, a replica and an offline root filesystem get."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from services_fixture import service_fleet

from clonefleet.services import database, mesh

pytestmark = pytest.mark.unit
RUNNER = Path(__file__).resolve().parents[1] / "fake_deploy.py"
CONF = "etc/postgresql/15/main"


def run(tmp_path: Path, name: str, data: dict[str, Any]) -> tuple[Path, str]:
    output = tmp_path / name
    output.mkdir()
    result = subprocess.run([sys.executable, str(RUNNER),
                             "deploys.mesh:mesh,deploys.database:database", str(output),
                             json.dumps(data)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return output / "files", "\n".join(json.loads((output / "commands.json").read_text()))


def node_data(tmp_path: Path, node: str) -> dict[str, Any]:
    lab = service_fleet(tmp_path, '[services.database]\nprimary = "fsn-1"\n')
    return {**mesh.host_data(lab.context(node)), **database.host_data(lab.context(node))}


def test_a_primary_gets_its_cluster_roles_and_slots_and_no_copy(tmp_path: Path) -> None:
    data = node_data(tmp_path, "fsn-1")
    files, commands = run(tmp_path, "primary", data)
    assert (files / "etc/wireguard/wg0.conf").read_text().count("[Peer]") == 2
    assert "listen_addresses = 'localhost,10.77.0.2'" in (
        files / CONF / "conf.d/50-clonefleet.conf").read_text()
    assert "10.77.0.0/24" in (files / CONF / "clonefleet-hba.conf").read_text()
    assert "wg syncconf wg0" in commands
    assert "pg_createcluster --start-conf=auto 15 main" in commands
    assert 'CREATE ROLE \\"replicator\\"' in commands or 'CREATE ROLE "replicator"' in commands
    assert "pg_create_physical_replication_slot" in commands
    assert "pg_basebackup" not in commands
    # The seed script and units are on every node, but a primary's timer stays off.
    assert (files / "usr/local/lib/clonefleet/replica-seed").exists()
    assert "start clonefleet-replica-seed" not in commands
    assert "enable clonefleet-replica-seed.timer" not in commands
    for secret in ("database_password", "database_replication_password", "mesh_private_key"):
        assert data[secret] not in commands  # in uploaded files only, never in a command


def test_a_replica_is_seeded_from_the_primary_and_gets_no_roles(tmp_path: Path) -> None:
    data = node_data(tmp_path, "fsn-2")
    files, commands = run(tmp_path, "replica", data)
    # Seeded now by the seed service if the primary is ready, else by its timer, later.
    assert "systemctl start clonefleet-replica-seed.service;" in commands
    assert "systemctl enable clonefleet-replica-seed.timer" in commands
    script = (files / "usr/local/lib/clonefleet/replica-seed").read_text()
    assert "pg_isready -q -h 10.77.0.2 -p 5432" in script  # seeded only if it answers
    assert "pg_basebackup -h 10.77.0.2 -p 5432 -U replicator" in script
    assert "ExecStart=/usr/local/lib/clonefleet/replica-seed" in (
        files / "etc/systemd/system/clonefleet-replica-seed.service").read_text()
    assert "pg_createcluster --start-conf=auto 15 main && rm -rf /var/lib/postgresql/15/main" \
        in commands  # no data of its own before the copy
    assert "CREATE ROLE" not in commands
    assert (files / "var/lib/postgresql/.pgpass").read_text().startswith(
        "10.77.0.2:5432:replication:replicator:")
    assert "After=wg-quick@wg0.service" in (
        files / "etc/systemd/system/postgresql@15-main.service.d/clonefleet.conf").read_text()


def test_offline_writes_files_and_enables_units_but_starts_and_queries_nothing(
        tmp_path: Path) -> None:
    data = {**node_data(tmp_path, "fsn-2"), "clonefleet_offline": True}
    files, commands = run(tmp_path, "offline", data)
    assert (files / "etc/wireguard/wg0.conf").exists()
    assert (files / CONF / "conf.d/50-clonefleet.conf").exists()
    assert "multi-user.target.wants/wg-quick@wg0.service" in commands
    assert "multi-user.target.wants/postgresql.service" in commands
    # The replica seeds itself once the node runs and the primary answers.
    assert ("ln -s /etc/systemd/system/clonefleet-replica-seed.timer "
            "/etc/systemd/system/timers.target.wants/clonefleet-replica-seed.timer") in commands
    assert (files / "usr/local/lib/clonefleet/replica-seed").exists()
    for forbidden in ("systemctl", "pg_createcluster", "pg_basebackup", "pg_ctlcluster",
                      "psql", "wg syncconf", "wg-quick up"):
        assert forbidden not in commands, forbidden


def test_offline_a_primary_gets_the_seed_files_but_no_enabled_timer(tmp_path: Path) -> None:
    data = {**node_data(tmp_path, "fsn-1"), "clonefleet_offline": True}
    files, commands = run(tmp_path, "offline-primary", data)
    assert (files / "etc/systemd/system/clonefleet-replica-seed.timer").exists()
    assert "ln -s /etc/systemd/system/clonefleet-replica-seed.timer" not in commands
