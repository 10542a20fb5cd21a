"""The full-clone deploy on two nodes of different regions, in chroots of the node image:
what it writes is the same on both except node data, and a second run changes nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from chroot_fixture import DeployedNodes, packages, run_deploy, tree, without_node_data

from clonefleet.dnsmap.endpoints import ENDPOINT_FACT
from clonefleet.dnsmap.server import NODE_CONFIG, NODE_CONFIG_OPERATIONS
from clonefleet.inventory import load_fleet
from clonefleet.secrets import open_secrets
from clonefleet.services import DeployOutcome, ServiceContext, after_deploy, database, mesh
from clonefleet.state import open_store
from deploys import database as database_deploy

pytestmark = pytest.mark.integration


def node_data(deployed: DeployedNodes, name: str) -> dict[str, str]:
    """Every value that may differ between nodes → its placeholder: the node's own data as
    "<self-…>", the other node's (it is the peer of the mesh, and one of the two is the
    database primary) as "<peer-…>", so the two nodes' files compare equal once replaced."""
    fleet = load_fleet(deployed.fleet.fleet_path)
    store = open_store(deployed.fleet.state_dir)
    secrets = open_secrets(deployed.fleet.state_dir)
    values = {}
    for node in fleet.nodes.values():
        who = "self" if node.name == name else "peer"
        region = fleet.regions[node.region]
        private_key = secrets.get(node.name, mesh.PRIVATE_KEY)
        values.update({
            f"{node.name}.{fleet.domain}": f"<{who}-fqdn>", node.name: f"<{who}-node>",
            node.ipv4: f"<{who}-ipv4>", node.ipv6: f"<{who}-ipv6>",
            region.location: f"<{who}-location>", node.region: f"<{who}-region>",
            secrets.get(node.name, "pdns_api_key"): f"<{who}-dns-api-key>",
            store.get_fact(node.name, "mesh_address"): f"<{who}-mesh-address>",
            private_key: f"<{who}-mesh-private-key>",
            mesh.public_key(private_key): f"<{who}-mesh-public-key>",
            database.slot_name(node.name): f"<{who}-database-slot>",
        })
    return values


def test_first_deploy_succeeds_and_configures_every_service(
        deployed_nodes: DeployedNodes) -> None:
    for name, result in deployed_nodes.first.items():
        assert not result.failed, f"{name}: {result.errors}"
        root = deployed_nodes.nodes[name].root
        config = (root / NODE_CONFIG.lstrip("/")).read_text()
        assert "launch=gsqlite3,geoip" in config and "webserver-allow-from=127.0.0.1, ::1, " \
            "10.77.0.0/24, 10.0.2.2/32" in config
        assert (root / "var/lib/powerdns/clonefleet.sqlite3").stat().st_size > 0
        assert "--collector.textfile.directory=/var/lib/prometheus/node-exporter" in (
            root / "etc/systemd/system/prometheus-node-exporter.service.d/clonefleet.conf"
        ).read_text()
        wants = root / "etc/systemd/system/multi-user.target.wants"
        assert (wants / "pdns.service").is_symlink()
        assert (wants / "prometheus-node-exporter.service").is_symlink()
        assert (root / "etc/systemd/system/timers.target.wants/smartwatch.timer").is_symlink()
        assert (root / "etc/hostname").read_text() == f"{name}\n"
        # The agent's code arrives as one archive: the node's python imports it.
        assert (root / "opt/smartwatch/lib").is_symlink()
        imported = subprocess.run(
            [shutil.which("chroot") or "chroot", str(root), "/usr/bin/python3", "-c",
             "import smartwatch.agent, pySMART"],
            env={"PYTHONPATH": "/opt/smartwatch/lib", "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=60, check=False)
        assert imported.returncode == 0, imported.stderr


# What a replica has and the database primary has not: the enabled seed timer.
REPLICA_ONLY = {f"etc/systemd/system/timers.target.wants/{database_deploy.SEED_TIMER}"}
# Made offline on the primary only: its cluster (pg_createcluster's configuration and data).
PRIMARY_CLUSTER = (str(Path(database_deploy.DATA_DIR).parent).lstrip("/"),
                   # postgresql-common's list of kernels apt must not autoremove
                   "etc/apt/apt.conf.d/02autoremove-postgresql",
                   *(f"{database_deploy.CONF_DIR.lstrip('/')}/{name}" for name in (
                       "postgresql.conf", "pg_hba.conf", "pg_ident.conf", "pg_ctl.conf",
                       "start.conf", "environment")))
# Differs by its node's slot (node data) and names the database primary's address, which is
# the node's own on the primary and its peer's on the replica: the same value in both roles.
NAMING_THE_PRIMARY = {database_deploy.SEED_SCRIPT.lstrip("/")}


def test_only_the_replica_enables_its_seed_timer_and_both_have_the_seed_script(
        deployed_nodes: DeployedNodes) -> None:
    roles = {name: node.data["database_role"] for name, node in deployed_nodes.nodes.items()}
    assert sorted(roles.values()) == ["primary", "replica"]
    for name, node in deployed_nodes.nodes.items():
        script = node.root / database_deploy.SEED_SCRIPT.lstrip("/")
        assert script.stat().st_mode & 0o111, name
        link = node.root / next(iter(REPLICA_ONLY))
        cluster = node.root / database_deploy.DATA_DIR.lstrip("/") / "PG_VERSION"
        if roles[name] == "replica":
            assert link.is_symlink() and os.readlink(link) == \
                f"/etc/systemd/system/{database_deploy.SEED_TIMER}"
            # seeded from the primary once the node runs, never made here
            assert not cluster.exists(), name
        else:
            assert not link.exists() and not link.is_symlink(), name
            assert cluster.read_text().strip() == database_deploy.VERSION, name


def test_two_nodes_of_two_regions_differ_only_in_node_data(
        deployed_nodes: DeployedNodes) -> None:
    fsn, ash = deployed_nodes.nodes["fsn-1"], deployed_nodes.nodes["ash-1"]
    fsn_tree, ash_tree = tree(fsn.upper), tree(ash.upper)
    assert NODE_CONFIG.lstrip("/") in fsn_tree  # the comparison sees the deploy's files
    # ... and the database role.
    replica_tree = fsn_tree if fsn.data["database_role"] == "replica" else ash_tree
    assert set(replica_tree) >= REPLICA_ONLY
    for path in REPLICA_ONLY:
        replica_tree.pop(path)
    primary_tree = ash_tree if replica_tree is fsn_tree else fsn_tree
    cluster = [path for path in primary_tree if path.startswith(PRIMARY_CLUSTER)]
    assert f"{database_deploy.DATA_DIR.lstrip('/')}/PG_VERSION" in cluster
    assert not [path for path in replica_tree if path.startswith(PRIMARY_CLUSTER)]
    for path in cluster:
        primary_tree.pop(path)
    # pg_createcluster gives the cluster's configuration folders to postgres; the replica's
    # (made for its conf.d only) are root's until its cluster is made on the node
    conf = database_deploy.CONF_DIR.lstrip("/")
    for folder in (str(Path(conf).parent), conf):
        primary_tree.pop(folder)
        replica_tree.pop(folder)

    assert sorted(fsn_tree) == sorted(ash_tree)
    fsn_data, ash_data = node_data(deployed_nodes, "fsn-1"), node_data(deployed_nodes, "ash-1")
    differing = [path for path in fsn_tree if fsn_tree[path] != ash_tree[path]]
    assert differing, "the nodes' names and keys must show up somewhere"
    primary = {fsn.data["database_primary_host"]: "<database-primary-mesh-address>"}
    for path in differing:
        (fsn_kind, fsn_content), (ash_kind, ash_content) = fsn_tree[path], ash_tree[path]
        assert fsn_kind == ash_kind, path
        fsn_values, ash_values = fsn_data, ash_data
        if path in NAMING_THE_PRIMARY:
            fsn_values, ash_values = {**fsn_data, **primary}, {**ash_data, **primary}
        assert without_node_data(fsn_content, fsn_values) == \
            without_node_data(ash_content, ash_values), path
    assert {"etc/hostname", NODE_CONFIG.lstrip("/")} <= set(differing)
    assert packages(fsn.root) == packages(ash.root)


def test_second_deploy_reports_no_changes(deployed_nodes: DeployedNodes) -> None:
    again = run_deploy(list(deployed_nodes.nodes.values()))
    for name, result in again.items():
        assert not result.failed, f"{name}: {result.errors}"
        assert result.changed == [], f"{name} changed on the second run: {result.changed}"


def test_the_deploys_operation_names_let_the_dns_hook_record_the_endpoint(
        deployed_nodes: DeployedNodes) -> None:
    fleet = load_fleet(deployed_nodes.fleet.fleet_path)
    store = open_store(deployed_nodes.fleet.state_dir)
    secrets = open_secrets(deployed_nodes.fleet.state_dir)
    result = deployed_nodes.first["fsn-1"]
    assert {name.rsplit(" | ", 1)[-1] for name in result.succeeded} >= NODE_CONFIG_OPERATIONS

    store.set_fact("fsn-1", "forwarded_ports", {"tcp/8081": ["127.0.0.1", 40123]})

    after_deploy(ServiceContext(fleet, fleet.node("fsn-1"), store, secrets),
                 DeployOutcome(result.failed, frozenset(result.succeeded)))

    assert store.get_fact("fsn-1", ENDPOINT_FACT)["api_url"] == "http://127.0.0.1:40123"
