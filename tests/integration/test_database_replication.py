"""A real PostgreSQL 15 primary and replica, configured from the files the deploy writes.

Both run as the postgres user on 127.0.0.1 (standing in for the mesh addresses, with the
allowed network 127.0.0.0/8), from data folders under a temporary folder. The primary gets the
deploy's roles, database and slots through the same SQL the deploy runs; the replica is seeded
with the deploy's own `pg_basebackup -R` command and the rendered password file. A row written
on the primary is read on the replica; the replica refuses writes; with the fleet's real mesh
network in pg_hba, a replication connection from 127.0.0.1 is refused.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from services_fixture import service_fleet

from clonefleet.services import database
from deploys import database as deploy
from deploys._paths import render

BIN = Path(deploy.BIN)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (BIN / "initdb").exists(), reason="needs PostgreSQL 15 "
                       "(apt-get install postgresql-15; scripts/setup does)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="runs PostgreSQL as the postgres user"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def as_postgres(*command: str, timeout: float = 60, check: bool = True,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "postgres", "--", *command], capture_output=True,
                          text=True, timeout=timeout, check=check, env=env)


def sh(command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                          timeout=timeout, check=False)


class Cluster:
    def __init__(self, base: Path, name: str, data: dict[str, Any]) -> None:
        self.base, self.name, self.data = base, name, data
        self.folder = base / name
        self.port = int(data["database_port"])
        self.hba = base / f"{name}-hba.conf"
        self.config = base / f"{name}.conf"

    def write_config(self) -> None:
        """The deploy's two rendered files, plus what Debian's own postgresql.conf would say
        (where the data and the socket are)."""
        settings = base_settings = self.base / f"{self.name}-clonefleet.conf"
        settings.write_text(render("database/postgresql.conf.j2",
                                   **deploy.server_variables(self.data, str(self.hba))))
        self.hba.write_text(render("database/hba.conf.j2", **deploy.hba_variables(self.data)))
        self.config.write_text(f"data_directory = '{self.folder}'\n"
                               f"unix_socket_directories = '{self.base}'\n"
                               f"include '{base_settings}'\n")
        for path in (settings, self.hba, self.config):
            shutil.chown(path, "postgres", "postgres")

    def start(self, env: dict[str, str] | None = None) -> None:
        result = as_postgres(str(BIN / "pg_ctl"), "-D", str(self.folder), "-l",
                             str(self.base / f"{self.name}.log"), "-w", "-t", "60", "-o",
                             f"-c config_file={self.config}", "start", check=False, env=env)
        assert result.returncode == 0, (result.stdout, result.stderr, self.log())

    def stop(self) -> None:
        if (self.folder / "postmaster.pid").exists():
            as_postgres(str(BIN / "pg_ctl"), "-D", str(self.folder), "-m", "immediate", "-w",
                        "stop", check=False)

    def reload(self) -> None:
        as_postgres(str(BIN / "pg_ctl"), "-D", str(self.folder), "reload")

    def log(self) -> str:
        path = self.base / f"{self.name}.log"
        return path.read_text() if path.exists() else ""

    def psql(self, sql: str, database_name: str = "app",
             check: bool = False) -> subprocess.CompletedProcess[str]:
        """As the application, over TCP with its password, as the app would."""
        env = {**os.environ, "PGPASSWORD": self.data["database_password"]}
        return subprocess.run([str(BIN / "psql"), "-X", "-A", "-t", "-h", "127.0.0.1", "-p",
                               str(self.port), "-U", self.data["database_user"], "-d",
                               database_name, "-c", sql], capture_output=True, text=True,
                              timeout=30, check=check, env=env)


@pytest.fixture
def base_folder() -> Iterator[Path]:
    # Not under pytest's tmp_path: its folders are root-only and PostgreSQL runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="clonefleet-pg-"))
    folder.chmod(0o755)
    shutil.chown(folder, "postgres", "postgres")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def host_data(tmp_path: Path, node: str) -> dict[str, Any]:
    lab = service_fleet(tmp_path, '[services.database]\nprimary = "fsn-1"\n')
    data = database.host_data(lab.context(node))
    # The mesh stood in by loopback ("localhost" is 127.0.0.1 here: one address to listen on).
    data.update(database_listen_addresses=["127.0.0.1"], database_allowed_cidr="127.0.0.0/8",
                database_primary_host="127.0.0.1")
    return data


def test_a_row_written_on_the_primary_is_read_on_the_replica_over_allowed_addresses_only(
        tmp_path: Path, base_folder: Path) -> None:
    primary_data = host_data(tmp_path, "fsn-1")
    replica_data = host_data(tmp_path, "fsn-2")
    port = free_port()
    for data in (primary_data, replica_data):
        data["database_port"] = data["database_primary_port"] = port
    assert primary_data["database_role"] == "primary"
    assert replica_data["database_role"] == "replica"
    primary = Cluster(base_folder, "primary", primary_data)
    replica = Cluster(base_folder, "replica", replica_data)
    try:
        as_postgres(str(BIN / "initdb"), "-D", str(primary.folder), "-U", "postgres",
                    "--auth-local=peer", "--auth-host=scram-sha-256")
        primary.write_config()
        primary.start()

        # The deploy's SQL makes the roles, the database and every replica's slot; after it,
        # the running server agrees with the host data and the deploy has nothing left to do.
        setup = sh(deploy.psql_script_command(deploy.primary_sql(primary_data, None), port,
                                              str(base_folder)))
        assert setup.returncode == 0, setup.stderr
        state = deploy.parse_state(sh(deploy.state_command(port, str(base_folder)))
                                   .stdout.splitlines())
        assert state is not None and not state.in_recovery
        assert state.slots == {"clonefleet_ash_1", "clonefleet_fsn_2"}
        assert deploy.primary_sql(primary_data, state) == []

        # The replica: its port, the deploy's password file and seed command.
        replica.port = replica_data["database_port"] = free_port()
        pgpass = base_folder / "pgpass"
        pgpass.write_text(render("database/pgpass.j2", **deploy.pgpass_variables(replica_data)))
        shutil.chown(pgpass, "postgres", "postgres")
        pgpass.chmod(0o600)
        seed = sh(deploy.basebackup_command(replica_data, str(replica.folder), str(pgpass)))
        assert seed.returncode == 0, seed.stderr
        assert (replica.folder / "standby.signal").exists()
        auto = (replica.folder / "postgresql.auto.conf").read_text()
        assert "primary_slot_name = 'clonefleet_fsn_2'" in auto
        # The replica keeps reading the password file; the password is not copied anywhere.
        assert "user=replicator" in auto and f"passfile=''{pgpass}''" in auto
        assert replica_data["database_replication_password"] not in auto
        replica.write_config()
        replica.start()

        primary.psql("CREATE TABLE visits (id serial PRIMARY KEY, node text)", check=True)
        primary.psql("INSERT INTO visits (node) VALUES ('from-the-primary')", check=True)
        deadline = time.monotonic() + 15
        while True:
            read = replica.psql("SELECT node FROM visits")
            if read.stdout.strip() == "from-the-primary" or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert read.stdout.strip() == "from-the-primary", (read.stderr, replica.log())

        refused = replica.psql("INSERT INTO visits (node) VALUES ('on-the-replica')")
        assert refused.returncode != 0
        assert "read-only transaction" in refused.stderr
        slots = sh(f"runuser -u postgres -- {BIN}/psql -X -A -t -h {base_folder} -p {port} "
                   "-d postgres -c \"SELECT slot_name FROM pg_replication_slots WHERE active\"")
        assert slots.stdout.split() == ["clonefleet_fsn_2"]

        # The fleet file names another primary (here: the same server by another name, as
        # after a failover): the deploy re-renders the password file and repoints the standby.
        replica_data["database_primary_host"] = "localhost"
        pgpass.write_text(render("database/pgpass.j2", **deploy.pgpass_variables(replica_data)))
        replica_state = deploy.parse_state(sh(deploy.state_command(
            replica.port, str(base_folder))).stdout.splitlines())
        repoint = deploy.replica_sql(replica_data, replica_state, str(pgpass))
        assert len(repoint) == 3
        moved = sh(deploy.psql_script_command(repoint, replica.port, str(base_folder)))
        assert moved.returncode == 0, moved.stderr
        primary.psql("INSERT INTO visits (node) VALUES ('after-the-move')", check=True)
        deadline = time.monotonic() + 20
        while "after-the-move" not in (read := replica.psql("SELECT node FROM visits")).stdout:
            assert time.monotonic() < deadline, (read.stderr, replica.log()[-3000:])
            time.sleep(0.3)
        replica_state = deploy.parse_state(sh(deploy.state_command(
            replica.port, str(base_folder))).stdout.splitlines())
        assert replica_state is not None and "host=localhost" in replica_state.primary_conninfo
        assert deploy.replica_sql(replica_data, replica_state, str(pgpass)) == []

        # The fleet's real mesh network in pg_hba: 127.0.0.1 is no longer allowed to replicate.
        primary.data["database_allowed_cidr"] = "10.77.0.0/24"
        primary.write_config()
        primary.reload()
        time.sleep(0.5)
        outsider = as_postgres("env", f"PGPASSFILE={pgpass}", str(BIN / "pg_basebackup"),
                               "-h", "127.0.0.1", "-p", str(port), "-U", "replicator", "-w",
                               "-D", str(base_folder / "outsider"), check=False)
        assert outsider.returncode != 0
        assert "no pg_hba.conf entry for replication connection" in outsider.stderr
    finally:
        replica.stop()
        primary.stop()


def test_the_seed_script_waits_for_the_primarys_role_and_slot_then_seeds_a_streaming_replica(
        tmp_path: Path, base_folder: Path) -> None:
    primary_data = host_data(tmp_path, "fsn-1")
    replica_data = host_data(tmp_path, "fsn-2")
    port = free_port()
    for data in (primary_data, replica_data):
        data["database_port"] = data["database_primary_port"] = port
    replica_data["database_port"] = free_port()
    primary = Cluster(base_folder, "primary", primary_data)
    replica = Cluster(base_folder, "replica", replica_data)
    staging = Path(f"{replica.folder}{deploy.STAGING_SUFFIX}")
    pgpass = base_folder / "pgpass"
    pgpass.write_text(render("database/pgpass.j2", **deploy.pgpass_variables(replica_data)))
    shutil.chown(pgpass, "postgres", "postgres")
    pgpass.chmod(0o600)
    replica.write_config()
    # The node's script, pointed at this test's folders; PostgreSQL started as the test does.
    start = " ".join(shlex.quote(part) for part in [
        "runuser", "-u", "postgres", "--", str(BIN / "pg_ctl"), "-D", str(replica.folder),
        "-l", str(base_folder / "replica.log"), "-w", "-t", "60", "-o",
        f"-c config_file={replica.config}", "start"])
    script = base_folder / "replica-seed"
    script.write_text(render("database/replica-seed.sh.j2", **deploy.seed_variables(
        replica_data, str(replica.folder), str(pgpass), start_command=start)))
    script.chmod(0o755)

    def seed() -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(script)], capture_output=True, text=True, timeout=120,
                              check=False)

    def left_empty() -> bool:
        return not (replica.folder / "PG_VERSION").exists() and not staging.exists()

    try:
        # The primary is not running: no unit failure, nothing copied.
        down = seed()
        assert down.returncode == 0, down.stderr
        assert "does not answer yet" in down.stdout
        assert left_empty()

        # The primary runs (pg_isready answers) but its deploy has not made the replication
        # role or this node's slot yet: the copy is refused and leaves nothing behind.
        as_postgres(str(BIN / "initdb"), "-D", str(primary.folder), "-U", "postgres",
                    "--auth-local=peer", "--auth-host=scram-sha-256")
        primary.write_config()
        primary.start()
        refused = seed()
        assert refused.returncode == 0, refused.stderr
        assert "the copy failed" in refused.stdout
        assert "replicator" in refused.stderr  # pg_basebackup's own reason, for the journal
        assert left_empty()

        # The primary's deploy made them: the next try seeds the replica and starts it.
        setup = sh(deploy.psql_script_command(deploy.primary_sql(primary_data, None), port,
                                              str(base_folder)))
        assert setup.returncode == 0, setup.stderr
        seeded = seed()
        assert seeded.returncode == 0, (seeded.stdout, seeded.stderr, replica.log())
        assert "seeded from the primary" in seeded.stdout
        assert (replica.folder / "standby.signal").exists() and not staging.exists()

        primary.psql("CREATE TABLE seeds (note text)", check=True)
        primary.psql("INSERT INTO seeds VALUES ('after-the-seed')", check=True)
        deadline = time.monotonic() + 20
        while "after-the-seed" not in (read := replica.psql("SELECT note FROM seeds")).stdout:
            assert time.monotonic() < deadline, (read.stderr, replica.log()[-3000:])
            time.sleep(0.3)
        streaming = sh(f"runuser -u postgres -- {BIN}/psql -X -A -t -h {base_folder} -p {port} "
                       "-d postgres -c \"SELECT slot_name || ' ' || state FROM "
                       "pg_stat_replication JOIN pg_replication_slots ON active_pid = pid\"")
        assert streaming.stdout.split("\n")[0] == "clonefleet_fsn_2 streaming", streaming

        # Seeded: a later try (the timer's, before it stops) touches nothing.
        again = seed()
        assert again.returncode == 0 and "nothing to seed" in again.stdout
        assert replica.psql("SELECT note FROM seeds").stdout.strip() == "after-the-seed"

        # A whole copy is made, but never renamed over a folder holding a database.
        replica.stop()
        sentinel = replica.folder / "kept"
        sentinel.write_text("the replica's own files\n")
        refused = sh(deploy.basebackup_command(replica_data, str(replica.folder), str(pgpass)))
        assert refused.returncode != 0
        # Only the slot's creation failed (it exists): the copy itself was whole.
        assert refused.stderr.count("error:") == 1 and "already exists" in refused.stderr
        assert sentinel.exists() and not staging.exists()
    finally:
        replica.stop()
        primary.stop()
