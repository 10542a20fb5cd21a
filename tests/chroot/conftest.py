"""Fixtures for deploys run in chroots of the node image (tests/chroot_fixture.py).

- `node_image`: the cached image's root filesystem (built first if missing: minutes, once).
- `chroot_fleet`: the two-region test fleet's state folder and keystore identity under a
  temporary folder, so nothing touches a real fleet.
- `deployed_nodes`: both nodes of that fleet deployed once with `deploys.full:node`, each on
  its own overlay of the image (module-scoped: the tests read what that deploy wrote).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from chroot_fixture import (
    TWO_REGION_FLEET,
    ChrootFleet,
    DeployedNodes,
    chroot_nodes,
    control_plane_host_data,
    run_deploy,
)


@pytest.fixture(scope="session")
def node_image() -> Path:
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        pytest.skip("chroot tests need root and debootstrap (scripts/setup)")
    from clonefleet.image.base import ensure_base_image
    from clonefleet.paths import cache_dir

    return ensure_base_image(cache_dir(), lambda message: None).root


@pytest.fixture(scope="module")
def chroot_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChrootFleet]:
    folder = tmp_path_factory.mktemp("chroot-fleet")
    fleet_path = folder / "clonetest.toml"
    fleet_path.write_text(TWO_REGION_FLEET)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLONEFLEET_AGE_KEY", str(folder / "age.key"))
        patch.setenv("CLONEFLEET_STATE_DIR", str(folder / "state-root"))
        yield ChrootFleet(fleet_path, folder / "state-root" / "clonetest", folder)


@pytest.fixture(scope="module")
def deployed_nodes(node_image: Path, chroot_fleet: ChrootFleet) -> Iterator[DeployedNodes]:
    names = ["fsn-1", "ash-1"]
    data = control_plane_host_data(chroot_fleet.fleet_path, chroot_fleet.state_dir, names)
    with chroot_nodes(node_image, chroot_fleet.workdir / "nodes", names) as nodes:
        for name, node in nodes.items():
            node.data = data[name]
        first = run_deploy(list(nodes.values()))
        yield DeployedNodes(chroot_fleet, nodes, first)
