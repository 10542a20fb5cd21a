"""The node deploy baked into a node layer (what `clonefleet provision` does while the rescue
system boots): the real deploy runner with `--chroot`, on an overlay of the node image.

It configures and enables every service, records nothing in the store (no drain token
issued, no DNS endpoint), and a second bake of the same tree changes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from chroot_fixture import ChrootFleet, chroot_nodes, control_plane_host_data

from clonefleet.dnsmap.endpoints import ENDPOINT_FACT
from clonefleet.dnsmap.server import NODE_CONFIG
from clonefleet.errors import InstallError
from clonefleet.image.bake import bake_deploy, in_memory_folder
from clonefleet.services import smartwatch
from clonefleet.state import open_store

pytestmark = pytest.mark.integration

NODE = "fsn-1"


@dataclass(frozen=True)
class Layer:
    root: Path  # the node layer's root filesystem (an overlay of the image)
    memory: Path  # the tmpfs it lives in, as provision builds it


@pytest.fixture
def layer(node_image: Path, chroot_fleet: ChrootFleet) -> Iterator[Layer]:
    control_plane_host_data(chroot_fleet.fleet_path, chroot_fleet.state_dir, [NODE])
    with in_memory_folder(chroot_fleet.workdir) as memory, \
            chroot_nodes(node_image, memory / "nodes", [NODE]) as nodes:
        yield Layer(nodes[NODE].root, memory)


def test_a_bake_configures_and_enables_the_node_and_records_nothing(
        layer: Layer, chroot_fleet: ChrootFleet) -> None:
    root, memory = layer.root, layer.memory
    first = bake_deploy(chroot_fleet.fleet_path, NODE, root, "deploys.full:node",
                        tmp_dir=memory)
    assert first.changed > 20, first
    assert "launch=gsqlite3,geoip" in (root / NODE_CONFIG.lstrip("/")).read_text()
    assert (root / "etc/haproxy/haproxy.cfg").read_text().count("bind") >= 2
    wants = root / "etc/systemd/system/multi-user.target.wants"
    for unit in ("haproxy.service", "pdns.service", "prometheus-node-exporter.service",
                 "postgresql.service", "clonefleet-app.service"):
        assert (wants / unit).is_symlink(), unit  # to a path inside the root
    assert (root / "etc/hostname").read_text() == f"{NODE}\n"
    # only a deploy on the node delivers a drain token, and only it is recorded
    assert not (root / "etc/smartwatch/drain_token").exists()
    assert (root / "etc/smartwatch/smartwatch.toml").exists()
    store = open_store(chroot_fleet.state_dir)
    for fact in (smartwatch.PENDING_FACT, smartwatch.DELIVERED_FACT, ENDPOINT_FACT):
        assert store.get_fact(NODE, fact) is None, fact

    second = bake_deploy(chroot_fleet.fleet_path, NODE, root, "deploys.full:node",
                         tmp_dir=memory)
    assert second.changed == 0, second
    assert second.unchanged >= first.changed

    # The facts the node's first deploy over SSH will ask are listed for it to read in one
    # go: the files it finds in place, and those only the running node answers.
    listed = json.loads((chroot_fleet.state_dir / "facts-read" / NODE /
                         "deploys.full.node.json").read_text())
    asked = {(entry["fact"].rpartition(":")[2], json.dumps(entry["kwargs"], sort_keys=True))
             for entry in listed}
    chrony = json.dumps({"machine": None, "services": ["chrony.service"], "user_mode": False,
                         "user_name": None})
    # a running systemd's answers: the unit's state, and whether it is enabled, which the
    # deploy asks only after its first command ("start it") for a unit found stopped here
    assert {("SystemdStatus", chrony), ("SystemdEnabled", chrony)} <= asked
    assert ("Sha256File", json.dumps({"path": "/etc/haproxy/haproxy.cfg"})) in asked


def test_a_bake_that_fails_names_the_node_and_the_cause(
        layer: Layer, chroot_fleet: ChrootFleet) -> None:
    root, memory = layer.root, layer.memory
    # sshd's drop-in folder is a file: the SSH hardening cannot be written
    target = root / "etc/ssh/sshd_config.d"
    for child in target.iterdir():
        child.unlink()
    target.rmdir()
    target.write_text("not a folder\n")
    with pytest.raises(InstallError, match=rf"{NODE}: baking deploys.full:node into the "
                                           r"node layer failed: .*/etc/ssh/sshd_config.d "
                                           r"exists and is not a directory"):
        bake_deploy(chroot_fleet.fleet_path, NODE, root, "deploys.full:node",
                    tmp_dir=memory)


def test_the_memory_folder_is_a_tmpfs_and_is_gone_afterwards(tmp_path: Path) -> None:
    with in_memory_folder(tmp_path) as folder:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        entry = next(line for line in mounts if line.split()[1] == str(folder))
        assert entry.split()[2] == "tmpfs" and "mode=700" in entry
        (folder / "secret").write_text("x")
    assert not folder.exists()
    assert str(folder) not in Path("/proc/self/mounts").read_text()
