"""A node layer that deletes files of the base image (a deploy baked into it renames SysV
links, say): packed from a real overlayfs, unpacked with tar over a copy of the base and
finished with the installer's own shell command, it leaves exactly the merged tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from clonefleet.errors import InstallError
from clonefleet.image.chroot import overlay
from clonefleet.image.node import DELETIONS, _pack_upper, delete_listed_command

pytestmark = pytest.mark.integration


@pytest.fixture
def lower(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("overlayfs needs root")
    root = tmp_path / "lower"
    (root / "etc/rc2.d").mkdir(parents=True)
    (root / "etc/rc2.d/K01haproxy").symlink_to("../init.d/haproxy")
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/ctrl-alt-del.target").symlink_to(
        "/lib/systemd/system/reboot.target")
    (root / "etc/name with space").write_text("base\n")
    (root / "etc/kept").write_text("base\n")
    (root / "srv/data").mkdir(parents=True)
    (root / "srv/data/one").write_text("1\n")
    return root


def tree(root: Path) -> dict[str, str]:
    """Every path under root → what it is (a link's target, a file's text)."""
    found = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            found[name] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[name] = path.read_text()
        else:
            found[name] = "dir"
    return found


def test_deleted_files_are_listed_packed_and_deleted_on_the_target(lower: Path,
                                                                     tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    with overlay(lower, tmp_path / "work") as (merged, upper):
        # what `systemctl enable` does to SysV links, and a unit masked by the hardening
        (merged / "etc/rc2.d/K01haproxy").unlink()
        (merged / "etc/rc2.d/S01haproxy").symlink_to("../init.d/haproxy")
        (merged / "etc/systemd/system/ctrl-alt-del.target").unlink()
        (merged / "etc/systemd/system/ctrl-alt-del.target").symlink_to("/dev/null")
        (merged / "etc/name with space").unlink()
        (merged / "etc/new").write_text("node\n")
        expected = tree(merged)
        _pack_upper(upper, layer)

    with tarfile.open(layer) as packed:
        names = {member.name: member for member in packed.getmembers()}
        listed = packed.extractfile(DELETIONS).read()  # type: ignore[union-attr]
    assert listed.split(b"\0") == [b"etc/name with space", b"etc/rc2.d/K01haproxy", b""]
    assert not any(member.ischr() for member in names.values())
    assert names["etc/systemd/system/ctrl-alt-del.target"].linkname == "/dev/null"

    # the install: the base, the layer over it, then the installer's deletions
    target = tmp_path / "target"
    shutil.copytree(lower, target, symlinks=True)
    subprocess.run(["tar", "-xpf", str(layer), "-C", str(target), "--numeric-owner"],
                   check=True)
    subprocess.run(["sh", "-c", delete_listed_command(str(target))], check=True)
    assert tree(target) == expected
    # a layer that deletes nothing: the command does nothing
    subprocess.run(["sh", "-c", delete_listed_command(str(target))], check=True)
    assert tree(target) == expected


def test_a_layer_that_replaces_a_whole_folder_is_refused(lower: Path, tmp_path: Path) -> None:
    with overlay(lower, tmp_path / "work") as (merged, upper):
        shutil.rmtree(merged / "srv/data")
        (merged / "srv/data").mkdir()
        (merged / "srv/data/two").write_text("2\n")
        with pytest.raises(InstallError, match="srv/data"):
            _pack_upper(upper, tmp_path / "layer.tar")
