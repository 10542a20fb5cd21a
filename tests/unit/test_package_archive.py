"""deploys/_archive.py: the packages' tar depends only on the files' paths and contents, leaves
compiled Python out, and its digest is what the node-side listing prints for the unpacked tree."""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import tarfile
from pathlib import Path

import pytest

from deploys._archive import DIGEST_COMMAND, MTIME, build_archive

pytestmark = pytest.mark.unit


def _package(root: Path) -> Path:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "agent.py").write_text("print('agent')\n")
    (root / "pkg" / "sub" / "disks.py").write_text("DISKS = []\n")
    (root / "pkg" / "__pycache__").mkdir()
    (root / "pkg" / "__pycache__" / "agent.cpython-311.pyc").write_bytes(b"\0compiled")
    (root / "pkg" / "stale.pyc").write_bytes(b"\0compiled")
    (root / "other").mkdir()
    (root / "other" / "device.py").write_text("class Device: ...\n")
    return root


def _sources(root: Path) -> list[tuple[str, str]]:
    return [("pkg", str(root / "pkg")), ("other", str(root / "other"))]


def _names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return archive.getnames()


def test_same_files_give_the_same_bytes_whatever_their_times_owners_and_modes(
        tmp_path: Path) -> None:
    first = build_archive(_sources(_package(tmp_path / "a")))
    second_root = _package(tmp_path / "b")
    os.utime(second_root / "pkg" / "agent.py", (1_800_000_000, 1_800_000_000))
    (second_root / "pkg" / "agent.py").chmod(0o600)
    second = build_archive(_sources(second_root))
    assert first.data == second.data
    assert first.digest == second.digest


def test_members_are_sorted_owned_by_root_with_fixed_times_and_no_compiled_python(
        tmp_path: Path) -> None:
    archive = build_archive(_sources(_package(tmp_path)))
    names = _names(archive.data)
    assert names == ["other", "other/device.py", "pkg", "pkg/__init__.py", "pkg/agent.py",
                     "pkg/sub", "pkg/sub/disks.py"]
    with tarfile.open(fileobj=io.BytesIO(archive.data)) as opened:
        for member in opened.getmembers():
            assert (member.uid, member.gid, member.uname, member.mtime) == (0, 0, "root", MTIME)
            assert member.mode == (0o755 if member.isdir() else 0o644)


def test_a_changed_or_removed_file_changes_the_archive_and_a_removed_one_is_absent(
        tmp_path: Path) -> None:
    root = _package(tmp_path)
    before = build_archive(_sources(root))
    (root / "pkg" / "sub" / "disks.py").unlink()
    removed = build_archive(_sources(root))
    assert "pkg/sub/disks.py" not in _names(removed.data)
    assert removed.data != before.data and removed.digest != before.digest
    (root / "pkg" / "agent.py").write_text("print('agent 2')\n")
    assert build_archive(_sources(root)).digest != removed.digest


def test_the_digest_is_what_the_node_side_listing_prints_for_the_unpacked_tree(
        tmp_path: Path) -> None:
    archive = build_archive(_sources(_package(tmp_path / "src")))
    unpacked = tmp_path / "node lib"  # a space: the command quotes the path
    with tarfile.open(fileobj=io.BytesIO(archive.data)) as opened:
        opened.extractall(unpacked, filter="data")
    (unpacked / "pkg" / "__pycache__").mkdir()  # written by the agent's python on the node
    (unpacked / "pkg" / "__pycache__" / "agent.cpython-311.pyc").write_bytes(b"\0")
    listing = subprocess.run(["sh", "-c", DIGEST_COMMAND.format(path=shlex.quote(str(unpacked)))],
                             capture_output=True, text=True, timeout=30, check=True)
    assert listing.stdout.split()[0] == archive.digest


def test_a_missing_package_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_archive([("pkg", str(tmp_path / "nowhere"))])
