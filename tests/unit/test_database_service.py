"""The database service: the primary from the fleet file, replicas everywhere else, its host
data, fleet-file errors, and the SQL the deploy would run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from services_fixture import service_fleet

from clonefleet.errors import InventoryError, InventoryErrors
from clonefleet.secrets import FLEET
from clonefleet.services import database, mesh
from deploys import database as deploy
from deploys._paths import render

pytestmark = pytest.mark.unit


def test_the_named_primary_and_a_replica_on_every_other_node(tmp_path: Path) -> None:
    lab = service_fleet(tmp_path, '[services.database]\nprimary = "fsn-2"\n')
    data = {name: database.host_data(lab.context(name)) for name in lab.fleet.nodes}

    assert {name: item["database_role"] for name, item in data.items()} == {
        "fsn-2": "primary", "fsn-1": "replica", "ash-1": "replica"}
    primary_address = lab.store.get_fact("fsn-2", mesh.ADDRESS_FACT)
    for name, item in data.items():
        own = lab.store.get_fact(name, mesh.ADDRESS_FACT)
        assert item["database_listen_addresses"] == ["localhost", own]
        assert item["database_primary_host"] == primary_address
        assert item["database_allowed_cidr"] == "10.77.0.0/24"
        assert item["database_replica_slots"] == ["clonefleet_ash_1", "clonefleet_fsn_1"]
        assert item["database_url"] == f"postgresql://app@{primary_address}:5432/app"
        assert item["database_password"] not in item["database_url"]
    assert data["fsn-1"]["database_slot"] == "clonefleet_fsn_1"
    # Fleet secrets: the same on every node, kept encrypted in the store.
    assert len({item["database_replication_password"] for item in data.values()}) == 1
    assert data["ash-1"]["database_replication_password"] == lab.secrets.get(
        FLEET, database.REPLICATION_PASSWORD)
    assert data["ash-1"]["database_password"] != data["ash-1"]["database_replication_password"]


def test_without_the_table_the_alphabetically_first_node_is_the_primary(tmp_path: Path) -> None:
    lab = service_fleet(tmp_path)
    assert database.primary(lab.fleet) == "ash-1"
    assert database.host_data(lab.context("ash-1"))["database_role"] == "primary"
    assert database.host_data(lab.context("fsn-1"))["database_role"] == "replica"


def test_an_unknown_primary_is_a_one_line_fleet_file_error(tmp_path: Path) -> None:
    with pytest.raises(InventoryError) as error:
        service_fleet(tmp_path, '[services.database]\nprimary = "hel-1"\n')
    assert str(error.value) == (
        f"{tmp_path / 'fleet.toml'}: services.database.primary: 'hel-1' is not a node of this "
        "fleet; name one of: ash-1, fsn-1, fsn-2")
    assert "\n" not in str(error.value)


def test_bad_database_settings_each_name_their_key(tmp_path: Path) -> None:
    with pytest.raises(InventoryErrors) as errors:
        service_fleet(tmp_path, '[services.database]\nname = "App-DB"\nport = 0\n'
                                'max_slot_wal_keep_size = "lots"\n')
    text = str(errors.value)
    assert "services.database.name: 'App-DB' is not a plain database name" in text
    assert "services.database.port: 0 is not a port" in text
    assert "services.database.max_slot_wal_keep_size: 'lots' is not a PostgreSQL size" in text


def test_rendered_settings_and_hba_allow_replication_only_from_the_mesh(tmp_path: Path) -> None:
    lab = service_fleet(tmp_path, '[services.database]\nprimary = "fsn-1"\nname = "shop"\n'
                                  'max_slot_wal_keep_size = "2GB"\n')
    data = database.host_data(lab.context("fsn-1"))
    settings = render("database/postgresql.conf.j2", **deploy.server_variables(data))
    assert "listen_addresses = 'localhost,10.77.0.2'\n" in settings
    assert f"hba_file = '{deploy.HBA_FILE}'\n" in settings
    assert "max_slot_wal_keep_size = '2GB'\n" in settings
    assert "max_replication_slots = 16\n" in settings  # three nodes and room for more

    hba = [line.split() for line in render("database/hba.conf.j2",
                                           **deploy.hba_variables(data)).splitlines()
           if line.strip() and not line.startswith("#")]
    replication = [line for line in hba if line[1] == "replication"]
    assert replication == [["host", "replication", "replicator", "10.77.0.0/24",
                            "scram-sha-256"]]
    assert ["host", "shop", "shop", "10.77.0.0/24", "scram-sha-256"] in hba
    assert all(line[-1] in ("peer", "scram-sha-256") for line in hba)


def test_scram_verifiers_match_only_their_password() -> None:
    verifier = deploy.scram_verifier("s3cret", salt=b"0123456789abcdef")
    assert verifier.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
    assert deploy.scram_matches("s3cret", verifier)
    assert not deploy.scram_matches("other", verifier)
    assert not deploy.scram_matches("s3cret", "md5abcdef")


def test_primary_sql_is_everything_when_unknown_and_nothing_when_the_server_agrees(
        tmp_path: Path) -> None:
    lab = service_fleet(tmp_path, '[services.database]\nprimary = "fsn-1"\n')
    data = database.host_data(lab.context("fsn-1"))
    everything = "\n".join(deploy.primary_sql(data, None))
    assert "CREATE ROLE \"replicator\"" in everything and "CREATE ROLE \"app\"" in everything
    assert "pg_create_physical_replication_slot" in everything
    # Passwords travel as SCRAM verifiers only.
    assert data["database_password"] not in everything
    assert data["database_replication_password"] not in everything

    agreed = deploy.ServerState(
        roles={"replicator": (True, deploy.scram_verifier(data["database_replication_password"])),
               "app": (False, deploy.scram_verifier(data["database_password"]))},
        databases={"app": "app", "postgres": "postgres"},
        slots={"clonefleet_ash_1", "clonefleet_fsn_2"})
    assert deploy.primary_sql(data, agreed) == []

    agreed.roles["app"] = (False, deploy.scram_verifier("an old password"))
    agreed.slots = {"clonefleet_ash_1", "clonefleet_gone_9"}
    changes = "\n".join(deploy.primary_sql(data, agreed))
    assert 'ALTER ROLE "app"' in changes and "replicator" not in changes
    assert "pg_create_physical_replication_slot" in changes
    assert "pg_drop_replication_slot" in changes


def test_server_state_is_parsed_from_the_query_output() -> None:
    state = deploy.parse_state(["recovery|false", "role|replicator|true|SCRAM-SHA-256$x",
                                "role|app|false|", "database|app|app", "slot|clonefleet_a"])
    assert state == deploy.ServerState(False, {"replicator": (True, "SCRAM-SHA-256$x"),
                                               "app": (False, "")}, {"app": "app"},
                                       {"clonefleet_a"})
    assert deploy.parse_state([]) is None  # not running: unknown


def test_replica_seed_command_uses_the_slot_and_the_password_file_never_the_password(
        tmp_path: Path) -> None:
    lab = service_fleet(tmp_path, '[services.database]\nprimary = "fsn-1"\n')
    data = database.host_data(lab.context("fsn-2"))
    command = deploy.basebackup_command(data)
    assert "-h 10.77.0.2 -p 5432 -U replicator" in command
    assert "-R -X stream -c fast -w -S clonefleet_fsn_2 -C; } ||" in command
    assert "PGPASSFILE=/var/lib/postgresql/.pgpass" in command
    assert data["database_replication_password"] not in command
    pgpass = render("database/pgpass.j2", **deploy.pgpass_variables(data))
    assert pgpass == (f"10.77.0.2:5432:replication:replicator:"
                      f"{data['database_replication_password']}\n")


def test_the_copy_is_renamed_into_the_data_folder_only_when_whole_and_never_over_a_database(
        tmp_path: Path) -> None:
    lab = service_fleet(tmp_path, '[services.database]\nprimary = "fsn-1"\n')
    command = deploy.basebackup_command(database.host_data(lab.context("fsn-2")))
    data, staging = "/var/lib/postgresql/15/main", "/var/lib/postgresql/15/main.seeding"
    assert command.count(f"-D {staging} ") == 2 and f"-D {data} " not in command
    copied, _, cleanup = command.partition(f"test ! -e {data}/PG_VERSION && ")
    assert copied.endswith("; } && ")  # only after a finished copy
    assert cleanup == (f"rm -rf {data} && mv -T {staging} {data} || "
                       f"{{ rm -rf {staging}; false; }}")


def test_the_seed_script_and_units_render_for_the_node(tmp_path: Path) -> None:
    lab = service_fleet(tmp_path, '[services.database]\nprimary = "fsn-1"\n')
    data = {**deploy.DEFAULTS, **database.host_data(lab.context("fsn-2"))}
    script = render("database/replica-seed.sh.j2", **deploy.seed_variables(data))
    assert script.startswith("#!/bin/sh\n")
    assert "pg_isready -q -h 10.77.0.2 -p 5432 -t 15; then" in script
    assert deploy.basebackup_command(data) in script
    assert script.rstrip().endswith(
        "systemctl stop --no-block clonefleet-replica-seed.timer\n"
        "systemctl enable postgresql && exec systemctl start postgresql "
        "postgresql@15-main.service")
    assert data["database_replication_password"] not in script
    service = render("database/replica-seed.service.j2", **deploy.seed_unit_variables(data))
    assert "ConditionPathExists=!/var/lib/postgresql/15/main/PG_VERSION\n" in service
    assert "ExecStart=/usr/local/lib/clonefleet/replica-seed\n" in service
    assert "After=wg-quick@wg0.service\n" in service
    timer = render("database/replica-seed.timer.j2", **deploy.seed_unit_variables(data))
    assert "OnUnitInactiveSec=30s\n" in timer and "WantedBy=timers.target" in timer


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_seed_units_and_script_pass_systemds_and_the_shells_checks(tmp_path: Path) -> None:
    lab = service_fleet(tmp_path, '[services.database]\nprimary = "fsn-1"\n')
    data = {**deploy.DEFAULTS, **database.host_data(lab.context("fsn-2"))}
    units = tmp_path / "units"
    units.mkdir()
    script = units / "replica-seed"
    script.write_text(render("database/replica-seed.sh.j2", **deploy.seed_variables(data)))
    script.chmod(0o755)
    checked = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True,
                             timeout=30, check=False)
    assert checked.returncode == 0, checked.stderr
    variables = {**deploy.seed_unit_variables(data), "script": str(script)}
    for unit in (deploy.SEED_SERVICE, deploy.SEED_TIMER):
        template = f"database/{unit.removeprefix('clonefleet-')}.j2"
        (units / unit).write_text(render(template, **variables))
    verified = subprocess.run(["systemd-analyze", "verify", "--man=no", deploy.SEED_SERVICE,
                               deploy.SEED_TIMER], cwd=units, capture_output=True, text=True,
                              timeout=60, check=False)
    assert verified.returncode == 0 and verified.stderr == "", verified.stderr


def test_the_deploys_seed_starts_the_service_and_only_an_unseeded_replica_its_timer(
        tmp_path: Path) -> None:
    lab = service_fleet(tmp_path, '[services.database]\nprimary = "fsn-1"\n')
    command = deploy.seed_command(database.host_data(lab.context("fsn-2")))
    now, _, later = command.partition("if [ -e /var/lib/postgresql/15/main/PG_VERSION ]; "
                                      "then exit $started; fi; ")
    assert now == "systemctl start clonefleet-replica-seed.service; started=$?; "
    assert later.startswith("systemctl start clonefleet-replica-seed.timer && echo ")
    assert "10.77.0.2:5432 is not ready yet" in later and "seeds itself" in later


def test_a_standby_is_pointed_at_the_fleet_files_primary_only_when_it_names_another(
        tmp_path: Path) -> None:
    lab = service_fleet(tmp_path, '[services.database]\nprimary = "fsn-1"\n')
    data = database.host_data(lab.context("fsn-2"))
    following = deploy.ServerState(in_recovery=True, primary_conninfo=(
        "user=replicator passfile='/var/lib/postgresql/.pgpass' channel_binding=prefer "
        "host=10.77.0.2 port=5432 sslmode=prefer"))
    assert deploy.replica_sql(data, following) == []
    assert deploy.replica_sql(data, None) == []  # not running: nothing to ask

    following.primary_conninfo = following.primary_conninfo.replace("10.77.0.2", "10.77.0.1")
    statements = deploy.replica_sql(data, following)
    assert statements == [
        "ALTER SYSTEM SET primary_conninfo = 'host=10.77.0.2 port=5432 user=replicator "
        "passfile=/var/lib/postgresql/.pgpass application_name=clonefleet_fsn_2';",
        "ALTER SYSTEM SET primary_slot_name = 'clonefleet_fsn_2';",
        "SELECT pg_reload_conf();"]
    assert data["database_replication_password"] not in "".join(statements)
    # A promoted node is no standby: never repointed.
    assert deploy.replica_sql(data, deploy.ServerState(in_recovery=False)) == []
