"""Python packages shipped to a node as one deterministic tar and swapped in atomically.

Copying package trees file by file (`files.sync`) costs pyinfra facts per file, which on a
slow node (an emulated lab VM) was most of the whole deploy. Here the controller packs the
packages into one tar whose bytes depend only on the files' paths and contents (members
sorted, fixed mtime, owner root, modes 644/755, no compiled Python), so the same code always
gives the same archive. The node is asked one question, the digest of the tree it has (one
shell pipeline, so a file edited or removed on the node is noticed as `files.sync` did); when
it matches, nothing is sent. Otherwise the archive is uploaded once, unpacked into a fresh
sibling folder named after the digest, and `dest`, a symlink, is switched to it with one
rename: a program starting meanwhile sees the old tree or the new one, never a mix, and files
removed from a package are gone. Older sibling folders (`<dest>-*`) are removed afterwards.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import shlex
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pyinfra import host
from pyinfra.api import FactBase, FileUploadCommand, operation

# 2000-01-01: any constant will do; GNU tar warns about time stamps near 1970.
MTIME = 946684800
EXCLUDED_SUFFIXES = (".pyc", ".pyo")
EXCLUDED_DIRS = ("__pycache__",)
# The node-side listing: the same files the archive holds, in the same order and format as
# `PackageArchive.digest` is computed from (`sha256sum` lines, sorted by bytes).
DIGEST_COMMAND = (
    "cd {path} 2>/dev/null && find . -type f ! -name '*.pyc' ! -name '*.pyo' "
    "! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0r sha256sum | sha256sum"
)


@dataclass(frozen=True)
class PackageArchive:
    data: bytes  # the tar
    digest: str  # sha256 of the tree's `sha256sum` listing, as `TreeDigest` reads it


def _members(sources: Sequence[tuple[str, str]]) -> list[tuple[str, Path | None]]:
    """(path in the archive, file or None for a folder), sorted by the path's bytes."""
    members: list[tuple[str, Path | None]] = []
    for name, folder in sources:
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"package folder {root} (for {name}) does not exist")
        members.append((name, None))
        for current, dirs, files in os.walk(root):
            dirs[:] = [entry for entry in dirs if entry not in EXCLUDED_DIRS]
            base = Path(current).relative_to(root)
            for entry in dirs:
                members.append(((Path(name) / base / entry).as_posix(), None))
            for entry in files:
                if not entry.endswith(EXCLUDED_SUFFIXES):
                    members.append(((Path(name) / base / entry).as_posix(),
                                    Path(current) / entry))
    return sorted(members, key=lambda member: member[0].encode())


def build_archive(sources: Sequence[tuple[str, str]]) -> PackageArchive:
    """One tar of the folders in `sources` ((name in the archive, local folder) pairs)."""
    buffer = io.BytesIO()
    listing = hashlib.sha256()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for path, source in _members(sources):
            info = tarfile.TarInfo(path)
            info.mtime = MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if source is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                archive.addfile(info)
                continue
            content = source.read_bytes()
            info.mode = 0o644
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
            listing.update(f"{hashlib.sha256(content).hexdigest()}  ./{path}\n".encode())
    return PackageArchive(buffer.getvalue(), listing.hexdigest())


class TreeDigest(FactBase[str]):
    """sha256 of the `sha256sum` listing of the files under a folder (compiled Python left
    out), "" when the folder does not exist."""

    def command(self, path: str) -> str:  # type: ignore[override]
        return f"({DIGEST_COMMAND.format(path=shlex.quote(path))}) || true"

    def process(self, output: list[str]) -> str:  # type: ignore[override]
        return output[0].split()[0] if output and output[0].strip() else ""


@operation()
def packages_folder(sources: Sequence[tuple[str, str]], dest: str):  # type: ignore[no-untyped-def]
    """
    Make `dest` hold exactly the given package folders, in one upload when anything differs.

    + sources: (name under dest, local folder) pairs, e.g. ``[("pySMART", "/…/pySMART")]``
    + dest: the folder on the node (a symlink to ``<dest>-<digest>``); its parent must exist

    **Example:**

        packages_folder(name="smartwatch code", dest="/opt/smartwatch/lib",
                        sources=[("smartwatch", "smartwatch")])
    """
    archive = build_archive(sources)
    if host.get_fact(TreeDigest, path=dest) == archive.digest:
        host.noop(f"{dest} is up to date")
        return
    parent, base = posixpath.split(dest.rstrip("/"))
    upload = f"{parent}/{base}-upload.tar"
    name = f"{base}-{archive.digest[:16]}"
    target, link, previous = (shlex.quote(path) for path in
                              (dest, f"{parent}/{base}-next", f"{parent}/{base}-previous"))
    yield FileUploadCommand(io.BytesIO(archive.data), upload)
    # The release folder is named after the digest, so every node gets the same names; when a
    # tree edited on the node is put right, the live folder has that name already and the new
    # one takes the other name of the pair.
    yield " && ".join([
        f"release={shlex.quote(name)}",
        f"{{ [ \"$(readlink {target})\" != \"$release\" ] || release=\"$release-1\"; }}",
        f"rm -rf {shlex.quote(parent)}/\"$release\"",
        f"mkdir -m 755 {shlex.quote(parent)}/\"$release\"",
        f"tar -xf {shlex.quote(upload)} -C {shlex.quote(parent)}/\"$release\" --no-same-owner",
        f"rm -f {shlex.quote(upload)}",
        f"ln -sfn \"$release\" {link}",
        # A real folder left by an older deploy cannot be renamed over: it is moved aside
        # first, the only moment `dest` is missing.
        f"{{ [ ! -d {target} ] || [ -L {target} ] || {{ rm -rf {previous} && "
        f"mv {target} {previous}; }}; }}",
        f"mv -T {link} {target}",
        f"find {shlex.quote(parent)} -mindepth 1 -maxdepth 1 -name {shlex.quote(base + '-*')} "
        f"! -name \"$release\" -exec rm -rf {{}} +",
    ])
