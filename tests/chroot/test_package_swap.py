"""The agent's code folder in a chroot of the node image: a changed package replaces the whole
folder in one step, a file removed from the package disappears, and the node's python imports
the new code (the deploy step of deploys/smartwatch.py, on its own)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from chroot_fixture import chroot_nodes, run_deploy

pytestmark = pytest.mark.integration

DEPLOY = "packages_deploy:packages"


def _import_version(root: Path) -> str:
    completed = subprocess.run(
        [shutil.which("chroot") or "chroot", str(root), "/usr/bin/python3", "-c",
         "import pkg.agent; print(pkg.agent.V)"],
        env={"PYTHONPATH": "/opt/smartwatch/lib", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=True)
    return completed.stdout.strip()


def test_a_changed_package_replaces_the_folder_and_a_removed_file_disappears(
        node_image: Path, tmp_path: Path) -> None:
    source = tmp_path / "src" / "pkg"
    (source / "drivers").mkdir(parents=True)
    (source / "__init__.py").write_text("")
    (source / "agent.py").write_text("V = 1\n")
    (source / "drivers" / "old.py").write_text("OLD = True\n")
    with chroot_nodes(node_image, tmp_path / "nodes", ["code-1"]) as nodes:
        node = nodes["code-1"]
        node.data = {"clonefleet_offline": True, "packages_source": str(source)}
        lib = node.root / "opt/smartwatch/lib"

        first = run_deploy([node], DEPLOY)["code-1"]
        assert not first.failed, first.errors
        assert lib.is_symlink() and (lib / "pkg/drivers/old.py").is_file()
        assert _import_version(node.root) == "1"
        first_release = os.readlink(lib)
        again = run_deploy([node], DEPLOY)["code-1"]
        assert not again.failed and again.changed == []  # also with __pycache__ written now

        (source / "agent.py").write_text("V = 2\n")
        (source / "drivers" / "old.py").unlink()
        changed = run_deploy([node], DEPLOY)["code-1"]
        assert not changed.failed, changed.errors
        assert [name.rsplit(" | ", 1)[-1] for name in changed.changed] == ["code"]
        assert os.readlink(lib) != first_release
        assert not (lib / "pkg/drivers/old.py").exists()
        assert sorted(path.name for path in lib.parent.iterdir()) == ["lib", os.readlink(lib)]
        assert _import_version(node.root) == "2"
        assert run_deploy([node], DEPLOY)["code-1"].changed == []
