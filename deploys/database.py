"""The database: PostgreSQL 15 cluster `main`, the primary or a streaming replica of it.

Host data (from `clonefleet.services.database`): `database_role` ("primary" or "replica"),
`database_primary_host` (the primary's mesh address), `database_primary_port`, `database_port`,
`database_listen_addresses`, `database_allowed_cidr` (the mesh network),
`database_replication_user`, `database_replication_password`, `database_slot` (this node's
slot on the primary), `database_replica_slots` (every replica's, kept by the primary),
`database_max_slot_wal_keep_size`, `database_max_wal_senders`, `database_name`,
`database_user`, `database_password`, and `mesh_interface` (PostgreSQL starts after the mesh).

The cluster is made by `pg_createcluster` when it has no configuration yet; our settings go to
`conf.d/50-clonefleet.conf` and our `pg_hba` to `clonefleet-hba.conf` (named by `hba_file`
there), so `pg_createcluster` never finds a file of ours in its way. A replica's data folder
is empty until it is seeded with `pg_basebackup -R` from the primary over the mesh by
`clonefleet-replica-seed.service` (the script `/usr/local/lib/clonefleet/replica-seed`): the
deploy starts it once, so a replica whose primary is ready is seeded within the deploy;
otherwise the deploy says so and succeeds (a lone node still deploys), and the service's
timer (enabled on replicas only) tries every 30 s until the primary answers *and* its deploy
has made the replication role and this node's slot. The copy is made next to the data folder
and renamed into place when whole, so the folder is never half-seeded, and a folder holding a
database is never replaced: a seeded node's service is a no-op, and a data folder that holds a
primary's data is never wiped (the deploy fails and says what to do).
A standby whose `primary_conninfo` names another primary than the host data (after a manual
failover) is pointed at it with `ALTER SYSTEM` and a reload.
Roles, database and slots are changed only when the running server differs (passwords are
compared with the stored SCRAM verifiers and sent as verifiers, never in clear). With
`clonefleet_offline`: configuration files, the seed script and units, the enabled PostgreSQL
unit, on the primary its cluster (`pg_createcluster`, not started) and on a replica the
enabled seed timer only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, server, systemd

from deploys._paths import template
from deploys._systemd import offline as is_offline

VERSION = "15"
CLUSTER = "main"
CONF_DIR = f"/etc/postgresql/{VERSION}/{CLUSTER}"
DATA_DIR = f"/var/lib/postgresql/{VERSION}/{CLUSTER}"
HBA_FILE = f"{CONF_DIR}/clonefleet-hba.conf"
PGPASS = "/var/lib/postgresql/.pgpass"
UNIT = f"postgresql@{VERSION}-{CLUSTER}.service"
BIN = f"/usr/lib/postgresql/{VERSION}/bin"
PACKAGES = [f"postgresql-{VERSION}"]
SLOT_PREFIX = "clonefleet_"
SCRAM_ITERATIONS = 4096  # PostgreSQL's default scram_iterations
STAGING_SUFFIX = ".seeding"  # a copy in progress, next to the data folder
SEED_SCRIPT = "/usr/local/lib/clonefleet/replica-seed"
SEED_SERVICE = "clonefleet-replica-seed.service"
SEED_TIMER = "clonefleet-replica-seed.timer"
SEED_INTERVAL = "30s"  # between a replica's tries while its primary is not ready
SEED_WAIT_SECONDS = 15  # how long one try waits for the primary to answer

DEFAULTS: dict[str, Any] = {
    "database_role": "primary",
    "database_primary_host": "",
    "database_primary_port": 5432,
    "database_port": 5432,
    "database_listen_addresses": ["localhost"],
    "database_allowed_cidr": "10.77.0.0/24",
    "database_replication_user": "replicator",
    "database_replication_password": "",
    "database_slot": "",
    "database_replica_slots": [],
    "database_max_slot_wal_keep_size": "10GB",
    "database_max_wal_senders": 10,
    "database_name": "app",
    "database_user": "app",
    "database_password": "",
    "mesh_interface": "wg0",
}


def server_variables(data: Mapping[str, Any], hba_file: str = HBA_FILE) -> dict[str, Any]:
    """The variables of `templates/database/postgresql.conf.j2`."""
    return {
        "listen_addresses": list(data["database_listen_addresses"]),
        "port": data["database_port"],
        "hba_file": hba_file,
        "max_wal_senders": data["database_max_wal_senders"],
        "max_slot_wal_keep_size": data["database_max_slot_wal_keep_size"],
    }


def hba_variables(data: Mapping[str, Any]) -> dict[str, Any]:
    """The variables of `templates/database/hba.conf.j2`."""
    return {
        "replication_user": data["database_replication_user"],
        "allowed_cidr": data["database_allowed_cidr"],
        "database_name": data["database_name"],
        "database_user": data["database_user"],
    }


def pgpass_variables(data: Mapping[str, Any]) -> dict[str, Any]:
    """The variables of `templates/database/pgpass.j2` (the replica's way to the primary)."""
    return {
        "primary_host": data["database_primary_host"],
        "port": data["database_primary_port"],
        "replication_user": data["database_replication_user"],
        "replication_password": data["database_replication_password"],
    }


def basebackup_command(data: Mapping[str, Any], data_dir: str = DATA_DIR,
                       pgpass: str = PGPASS) -> str:
    """Make `data_dir` a copy of the primary, configured as its standby (`-R`).

    The copy is made in `<data_dir>.seeding` and renamed to `data_dir` only when complete, and
    never over a folder holding a database (PG_VERSION), so `data_dir` is either untouched or a
    whole copy: a failed, refused or interrupted copy leaves nothing that could be started.
    The slot is created by the copy (`-C`) unless the primary made it already.
    """
    quoted, staging = shlex.quote(data_dir), shlex.quote(data_dir + STAGING_SUFFIX)
    backup = " ".join([
        "runuser -u postgres --", "env", f"PGPASSFILE={shlex.quote(pgpass)}",
        f"{BIN}/pg_basebackup", "-h", shlex.quote(data["database_primary_host"]),
        "-p", str(int(data["database_primary_port"])),
        "-U", shlex.quote(data["database_replication_user"]), "-D", staging,
        "-R", "-X", "stream", "-c", "fast", "-w", "-S", shlex.quote(data["database_slot"]),
    ])
    fresh = f"rm -rf {staging} && install -d -o postgres -g postgres -m 700 {staging}"
    return (f"{{ {{ {fresh} && {backup} -C; }} || {{ {fresh} && {backup}; }}; }} && "
            f"test ! -e {quoted}/PG_VERSION && rm -rf {quoted} && mv -T {staging} {quoted} "
            f"|| {{ rm -rf {staging}; false; }}")


def scram_verifier(password: str, salt: bytes | None = None,
                   iterations: int = SCRAM_ITERATIONS) -> str:
    """A PostgreSQL SCRAM-SHA-256 verifier of `password` (what `pg_authid` stores)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def encode(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return (f"SCRAM-SHA-256${iterations}:{encode(salt)}$"
            f"{encode(stored_key)}:{encode(server_key)}")


def scram_matches(password: str, verifier: str) -> bool:
    try:
        method, rest = verifier.split("$", 1)
        counts, _keys = rest.split("$", 1)
        iterations, salt = counts.split(":", 1)
        expected = scram_verifier(password, base64.b64decode(salt), int(iterations))
    except ValueError:
        return False
    return method == "SCRAM-SHA-256" and hmac.compare_digest(expected, verifier)


@dataclass
class ServerState:
    """What a running PostgreSQL holds of what the deploy manages."""

    in_recovery: bool = False
    # name: (replication, SCRAM verifier)
    roles: dict[str, tuple[bool, str]] = field(default_factory=dict)
    databases: dict[str, str] = field(default_factory=dict)  # name: owner
    slots: set[str] = field(default_factory=set)
    primary_conninfo: str = ""  # a standby's way to its primary


STATE_QUERY = (
    "SELECT 'recovery|' || pg_is_in_recovery()::text "
    "UNION ALL SELECT 'role|' || rolname || '|' || rolreplication::text || '|' || "
    "coalesce(rolpassword, '') FROM pg_authid WHERE rolcanlogin "
    "UNION ALL SELECT 'database|' || datname || '|' || pg_get_userbyid(datdba) FROM pg_database "
    "UNION ALL SELECT 'slot|' || slot_name FROM pg_replication_slots "
    "UNION ALL SELECT 'conninfo|' || current_setting('primary_conninfo')"
)


def parse_state(lines: list[str]) -> ServerState | None:
    state = ServerState()
    seen = False
    for line in lines:
        kind, _, rest = line.partition("|")
        if kind == "recovery":
            seen, state.in_recovery = True, rest == "true"
        elif kind == "role":
            name, replication, verifier = rest.split("|", 2)
            state.roles[name] = (replication == "true", verifier)
        elif kind == "database":
            name, owner = rest.split("|", 1)
            state.databases[name] = owner
        elif kind == "slot":
            state.slots.add(rest)
        elif kind == "conninfo":
            state.primary_conninfo = rest
    return state if seen else None


def _conninfo_value(conninfo: str, key: str) -> str:
    match = re.search(rf"(?:^|\s){key}=('(?:[^']|'')*'|\S+)", conninfo)
    return match.group(1).strip("'") if match else ""


def replica_conninfo(data: Mapping[str, Any], pgpass: str = PGPASS) -> str:
    return (f"host={data['database_primary_host']} port={int(data['database_primary_port'])} "
            f"user={data['database_replication_user']} passfile={pgpass} "
            f"application_name={data['database_slot']}")


def replica_sql(data: Mapping[str, Any], current: ServerState | None,
                pgpass: str = PGPASS) -> list[str]:
    """The SQL that points a running standby at the primary the fleet file names (after a
    failover, its copy's primary_conninfo still names the old one); [] when it already does."""
    if current is None or not current.in_recovery:
        return []
    wanted = {"host": str(data["database_primary_host"]),
              "port": str(int(data["database_primary_port"])),
              "user": str(data["database_replication_user"])}
    if all(_conninfo_value(current.primary_conninfo, key) == value
           for key, value in wanted.items()):
        return []
    return [f"ALTER SYSTEM SET primary_conninfo = {_quote(replica_conninfo(data, pgpass))};",
            f"ALTER SYSTEM SET primary_slot_name = {_quote(data['database_slot'])};",
            "SELECT pg_reload_conf();"]


def state_command(port: int, socket_dir: str = "") -> str:
    socket = f"-h {shlex.quote(socket_dir)} " if socket_dir else ""
    return (f"runuser -u postgres -- {BIN}/psql -X -A -t {socket}-p {int(port)} -d postgres "
            f"-c {shlex.quote(STATE_QUERY)} 2>/dev/null || true")


class PostgresState(FactBase[ServerState | None]):
    """The running cluster's roles, databases and slots; None when it is not running."""

    def command(self, port: int) -> str:
        return state_command(port)

    def process(self, output: list[str]) -> ServerState | None:
        return parse_state(output)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def primary_sql(data: Mapping[str, Any], current: ServerState | None) -> list[str]:
    """The SQL that makes the primary's roles, database and slots what the host data says
    (everything, idempotently, when the server's state is unknown); [] when nothing differs."""
    statements = []
    wanted_roles = [(data["database_replication_user"], data["database_replication_password"],
                     True),
                    (data["database_user"], data["database_password"], False)]
    for role, password, replication in wanted_roles:
        have = current.roles.get(role) if current else None
        if have and have[0] == replication and scram_matches(password, have[1]):
            continue
        if not have:
            statements.append(f"DO $do$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE "
                              f"rolname = {_quote(role)}) THEN CREATE ROLE \"{role}\"; "
                              f"END IF; END $do$;")
        statements.append(f"ALTER ROLE \"{role}\" WITH LOGIN "
                          f"{'REPLICATION' if replication else 'NOREPLICATION'} "
                          f"PASSWORD {_quote(scram_verifier(password))};")
    name, owner = data["database_name"], data["database_user"]
    if current is None or current.databases.get(name) != owner:
        statements.append(f"SELECT 'CREATE DATABASE \"{name}\" OWNER \"{owner}\"' WHERE NOT "
                          f"EXISTS (SELECT FROM pg_database WHERE datname = {_quote(name)})"
                          "\\gexec")
        statements.append(f"ALTER DATABASE \"{name}\" OWNER TO \"{owner}\";")
    wanted_slots = sorted(data["database_replica_slots"])
    array = "ARRAY[" + ", ".join(_quote(slot) for slot in wanted_slots) + "]::text[]"
    if current is None or set(wanted_slots) - current.slots:
        statements.append(f"SELECT pg_create_physical_replication_slot(slot) FROM "
                          f"unnest({array}) AS slot WHERE slot NOT IN "
                          "(SELECT slot_name FROM pg_replication_slots);")
    stale = {slot for slot in (current.slots if current else set())
             if slot.startswith(SLOT_PREFIX) and slot not in wanted_slots}
    if current is None or stale:
        # A slot of a node that left the fleet would keep WAL forever (up to the bound).
        statements.append(f"SELECT pg_drop_replication_slot(slot_name) FROM "
                          f"pg_replication_slots WHERE slot_name LIKE 'clonefleet\\_%' AND "
                          f"NOT active AND slot_name <> ALL({array});")
    return statements


def psql_script_command(statements: list[str], port: int, socket_dir: str = "") -> str:
    """Run `statements` as the postgres user, stopping at the first error."""
    socket = f"-h {shlex.quote(socket_dir)} " if socket_dir else ""
    script = "\n".join(statements)
    return (f"runuser -u postgres -- {BIN}/psql -X -q -v ON_ERROR_STOP=1 {socket}"
            f"-p {int(port)} -d postgres <<'CLONEFLEET_SQL'\n{script}\nCLONEFLEET_SQL")


@deploy("clonefleet database", data_defaults=DEFAULTS)
def database() -> None:
    data = {key: host.data.get(key) for key in DEFAULTS}
    offline = is_offline()
    primary = data["database_role"] == "primary"
    apt.packages(name="PostgreSQL (from the image)", packages=PACKAGES)

    configured = host.get_fact(File, path=f"{CONF_DIR}/postgresql.conf") is not None
    seeded = host.get_fact(File, path=f"{DATA_DIR}/PG_VERSION") is not None
    standby = host.get_fact(File, path=f"{DATA_DIR}/standby.signal") is not None
    # Offline (a node layer baked on the controller) only on the primary: its cluster then
    # starts at the node's first boot. A replica's stays unmade until the node runs: made
    # offline, its emptied data folder would fail PostgreSQL's start at every boot.
    if not configured and (primary or not offline):
        create = f"pg_createcluster --start-conf=auto {VERSION} {CLUSTER}"
        if not primary:
            # A replica's data comes from the primary only: an empty folder until seeded, so
            # a data folder without standby.signal always means a primary's data.
            create += f" && rm -rf {DATA_DIR}"
        server.shell(name="PostgreSQL cluster created", commands=[create])

    files.directory(name="PostgreSQL conf.d", path=f"{CONF_DIR}/conf.d", user="postgres",
                    group="postgres", mode="755")
    settings = files.template(name="PostgreSQL settings", src=template(
        "database/postgresql.conf.j2"), dest=f"{CONF_DIR}/conf.d/50-clonefleet.conf",
        user="postgres", group="postgres", mode="644", **server_variables(data))
    hba = files.template(name="PostgreSQL client access (pg_hba)",
                         src=template("database/hba.conf.j2"), dest=HBA_FILE, user="postgres",
                         group="postgres", mode="640", **hba_variables(data))
    # Every node has it, so a promoted replica's old primary can follow it after a failover.
    files.template(name="Replication password", src=template("database/pgpass.j2"),
                   dest=PGPASS, user="postgres", group="postgres", mode="600",
                   **pgpass_variables(data))
    mesh_first = files.template(
        name="PostgreSQL starts after the mesh", src=template("database/mesh-first.conf.j2"),
        dest=f"/etc/systemd/system/postgresql@{VERSION}-{CLUSTER}.service.d/clonefleet.conf",
        mode="644", mesh_unit=f"wg-quick@{data['mesh_interface']}.service")
    seed_units = _seed_files(data)

    if offline:
        files.link(name="PostgreSQL enabled at boot",
                   path="/etc/systemd/system/multi-user.target.wants/postgresql.service",
                   target="/lib/systemd/system/postgresql.service")
        # What `systemctl enable` makes (WantedBy=timers.target); absent on a primary.
        files.link(name="Replica seed timer enabled on replicas only",
                   path=f"/etc/systemd/system/timers.target.wants/{SEED_TIMER}",
                   target=f"/etc/systemd/system/{SEED_TIMER}", present=not primary)
        return
    systemd.daemon_reload(name="systemd reads the PostgreSQL units", _if=lambda: any(
        unit.did_change() for unit in (mesh_first, *seed_units)))
    # Started only while a replica has no copy (below): a seeded replica's timer stays off.
    systemd.service(name="Replica seed timer enabled on replicas only", service=SEED_TIMER,
                    running=False if primary else None, enabled=not primary)

    if primary:
        _running(settings.did_change, hba.did_change)
        current = host.get_fact(PostgresState, port=data["database_port"])
        statements = primary_sql(data, current)
        if statements:
            server.shell(name="PostgreSQL roles, database and replication slots",
                         commands=[psql_script_command(statements, data["database_port"])])
        return

    if standby:
        _running(settings.did_change, hba.did_change)
        statements = replica_sql(data, host.get_fact(PostgresState, port=data["database_port"]))
        if statements:
            server.shell(name="PostgreSQL replica follows the fleet file's primary",
                         commands=[psql_script_command(statements, data["database_port"])])
    elif seeded and configured:
        server.shell(name="PostgreSQL replica refuses to replace a primary's data", commands=[
            f"echo 'this node holds a primary database in {DATA_DIR}, but the fleet file names "
            f"another primary; if that is right (after a failover), move the folder away and "
            "deploy again to seed a replica' >&2; exit 1"])
    else:
        server.shell(name="PostgreSQL replica seeded from the primary (pg_basebackup)",
                     commands=[seed_command(data)])


def seed_variables(data: Mapping[str, Any], data_dir: str = DATA_DIR, pgpass: str = PGPASS,
                   start_command: str = "") -> dict[str, Any]:
    """The variables of `templates/database/replica-seed.sh.j2`. `start_command` starts the
    seeded PostgreSQL (default: the node's units, and the timer stopped: nothing left to do)."""
    return {
        "service": SEED_SERVICE,
        "data_dir": shlex.quote(data_dir),
        "primary_host": shlex.quote(str(data["database_primary_host"])),
        "primary_port": int(data["database_primary_port"]),
        "bin": BIN,
        "wait_seconds": SEED_WAIT_SECONDS,
        "copy_command": basebackup_command(data, data_dir, pgpass),
        "start_command": start_command or (
            f"systemctl stop --no-block {SEED_TIMER}\n"
            f"systemctl enable postgresql && exec systemctl start postgresql {UNIT}"),
    }


def seed_unit_variables(data: Mapping[str, Any]) -> dict[str, Any]:
    """The variables of the seed service and timer templates."""
    return {"data_dir": DATA_DIR, "conf_file": f"{CONF_DIR}/postgresql.conf",
            "mesh_unit": f"wg-quick@{data['mesh_interface']}.service", "script": SEED_SCRIPT,
            "interval": SEED_INTERVAL}


def seed_command(data: Mapping[str, Any]) -> str:
    """Seed the replica now if the primary is ready (the seed service, synchronously);
    otherwise start its timer, say so, and leave the node without a copy: it seeds itself as
    soon as the primary answers (a lone node of a fleet deploys). Fails only when a finished
    copy does not start."""
    primary = f"{data['database_primary_host']}:{int(data['database_primary_port'])}"
    waiting = (f"the primary database at {primary} is not ready yet (not deployed yet?): this "
               f"replica seeds itself as soon as it answers (journalctl -u {SEED_SERVICE})")
    return (f"systemctl start {SEED_SERVICE}; started=$?; "
            f"if [ -e {DATA_DIR}/PG_VERSION ]; then exit $started; fi; "
            f"systemctl start {SEED_TIMER} && echo {shlex.quote(waiting)} >&2")


def _seed_files(data: Mapping[str, Any]) -> list[Any]:
    """The seed script and its units, on every node (enabled on replicas only), so a node whose
    role changes needs only its timer switched."""
    files.directory(name="clonefleet scripts folder", path=str(Path(SEED_SCRIPT).parent),
                    mode="755")
    files.template(name="Replica seed script", src=template("database/replica-seed.sh.j2"),
                   dest=SEED_SCRIPT, mode="755", **seed_variables(data))
    return [files.template(name=f"systemd unit {unit}",
                           src=template(f"database/{unit.removeprefix('clonefleet-')}.j2"),
                           dest=f"/etc/systemd/system/{unit}", mode="644",
                           **seed_unit_variables(data))
            for unit in (SEED_SERVICE, SEED_TIMER)]


def _running(settings_changed: Any, hba_changed: Any) -> None:
    systemd.service(name="PostgreSQL running", service="postgresql", running=True,
                    enabled=True)
    systemd.service(name="PostgreSQL cluster running", service=UNIT, running=True)
    # listen_addresses and the slot/sender counts need a restart; pg_hba a reload.
    systemd.service(name="PostgreSQL restarted for its settings", service=UNIT,
                    restarted=True, _if=settings_changed)
    systemd.service(name="PostgreSQL reloaded for pg_hba", service=UNIT, reloaded=True,
                    _if=hba_changed)
