"""A local, signed apt repository served on loopback, for the rollout's tests.

Small packages are generated with `dpkg-deb --build`; `apt-ftparchive` indexes them per suite
and `gpg` (a throwaway key in the repository's own GNUPGHOME) signs each suite's Release as
InRelease. A plain HTTP server on 127.0.0.1 serves the folder. The suites mimic Debian's:
`bookworm-security` (Origin Debian, Label Debian-Security, Suite stable-security) and
`bookworm-updates` (Label Debian, Suite stable-updates).

`debian_root` is a minimal Debian 12 root (debootstrap minbase with needrestart), built once
from the Debian mirror into a shared folder outside the node image cache and reused by
every run; each test writes to its own overlay of it (`clonefleet.image.chroot.overlay`).

`SECURITY_UPGRADES` makes a node image need a reboot the way Debian's kernel packages do: the
package `linux-image-cftest`'s postinst touches /var/run/reboot-required. `point_root_at`
makes a Debian root (a chroot overlay of the node image) use this repository only, and
installs the older versions first, so that `apt-get -s dist-upgrade` there lists real
upgrades from real suites.
"""

from __future__ import annotations

import fcntl
import functools
import http.server
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    depends: str = ""
    postinst: str = ""  # shell script body, run on configure


INSTALLED = (
    Package("cf-tool", "1.0"),
    Package("cf-extra", "1.0"),
    Package("linux-image-cftest", "1.0"),
)
# What the security suite publishes: a plain upgrade that pulls in a new library, and a
# "kernel" whose installation asks for a reboot.
SECURITY_UPGRADES = (
    Package("cf-tool", "1.1", depends="libcf1 (>= 1.1)"),
    Package("libcf1", "1.1"),
    Package("linux-image-cftest", "2.0",
            postinst="touch /var/run/reboot-required\n"
                     "echo linux-image-cftest >> /var/run/reboot-required.pkgs\n"),
)
OTHER_UPGRADES = (Package("cf-extra", "1.1"),)
SUITES = {
    "bookworm-security": {"Origin": "Debian", "Label": "Debian-Security",
                          "Suite": "stable-security"},
    "bookworm-updates": {"Origin": "Debian", "Label": "Debian", "Suite": "stable-updates"},
}


def build_deb(folder: Path, package: Package) -> Path:
    """A minimal binary package (architecture all) that installs one file."""
    tree = folder / "build" / f"{package.name}_{package.version}"
    (tree / "DEBIAN").mkdir(parents=True, exist_ok=True)
    control = (f"Package: {package.name}\nVersion: {package.version}\nArchitecture: all\n"
               "Maintainer: clonefleet tests <tests@clonefleet.test>\nPriority: optional\n"
               f"Section: misc\nDescription: rollout test package {package.name}\n")
    if package.depends:
        control += f"Depends: {package.depends}\n"
    (tree / "DEBIAN" / "control").write_text(control)
    if package.postinst:
        script = tree / "DEBIAN" / "postinst"
        script.write_text(f"#!/bin/sh\nset -e\n{package.postinst}")
        script.chmod(0o755)
    payload = tree / "usr" / "share" / "doc" / package.name
    payload.mkdir(parents=True, exist_ok=True)
    (payload / "VERSION").write_text(package.version + "\n")
    out = folder / f"{package.name}_{package.version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(out)],
                   check=True, capture_output=True, timeout=60)
    return out


class AptRepo:
    """The repository's files under `folder`, served at `url` once started."""

    def __init__(self, folder: Path, suites: dict[str, tuple[Package, ...]]) -> None:
        self.folder = folder
        self.gnupg = folder / "gnupg"
        self.gnupg.mkdir(mode=0o700, parents=True)
        self.root = folder / "repo"
        self._gpg("--quick-gen-key", "clonefleet test repository <repo@clonefleet.test>",
                  "ed25519", "sign", "never")
        self.keyring = folder / "repo-key.gpg"
        self.keyring.write_bytes(self._gpg("--export"))
        for suite, packages in suites.items():
            pool = self.root / "pool" / suite
            pool.mkdir(parents=True)
            for package in packages:
                build_deb(pool, package)
            self._index(suite)
        self._server: http.server.ThreadingHTTPServer | None = None
        self.url = ""

    def _gpg(self, *arguments: str) -> bytes:
        return subprocess.run(["gpg", "--homedir", str(self.gnupg), "--batch",
                               "--pinentry-mode", "loopback", "--passphrase", "", *arguments],
                              check=True, capture_output=True, timeout=60).stdout

    def _index(self, suite: str) -> None:
        packages = subprocess.run(["apt-ftparchive", "packages", f"pool/{suite}"],
                                  cwd=self.root, check=True, capture_output=True,
                                  timeout=60).stdout
        for architecture in ("all", "amd64"):  # apt reads the indexes of both
            binary = self.root / "dists" / suite / "main" / f"binary-{architecture}"
            binary.mkdir(parents=True)
            (binary / "Packages").write_bytes(packages)
        fields = {**SUITES.get(suite, {"Origin": "clonefleet-test", "Label": "clonefleet-test",
                                       "Suite": suite}),
                  "Codename": suite, "Architectures": "all amd64", "Components": "main"}
        options = [f"-oAPT::FTPArchive::Release::{key}={value}" for key, value in fields.items()]
        release = subprocess.run(["apt-ftparchive", *options, "release", "."],
                                 cwd=self.root / "dists" / suite, check=True,
                                 capture_output=True, timeout=60).stdout
        (self.root / "dists" / suite / "Release").write_bytes(release)
        self._gpg("--clearsign", "-o", str(self.root / "dists" / suite / "InRelease"),
                  str(self.root / "dists" / suite / "Release"))

    def start(self) -> None:
        handler = functools.partial(_QuietHandler, directory=str(self.root))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True,
                         name="apt-repo").start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        # gpg started an agent for the signing key's home; it would outlive the tests.
        subprocess.run(["gpgconf", "--homedir", str(self.gnupg), "--kill", "gpg-agent"],
                       check=False, capture_output=True, timeout=30)

    def sources(self, key_path: str, url: str = "") -> str:
        """deb822 sources for every suite, the key at `key_path` (as the node sees it), the
        repository at `url` (default: where it listens; a VM guest reaches it elsewhere)."""
        return "".join(f"Types: deb\nURIs: {url or self.url}\nSuites: {suite}\n"
                       "Components: main\n"
                       f"Signed-By: {key_path}\n\n"
                       for suite in sorted(SUITES))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def point_root_at(root: Path, repo: AptRepo, installed: tuple[Package, ...] = INSTALLED,
                  refresh: bool = True) -> None:
    """Make the Debian root at `root` use only `repo` (no other source is left, so nothing
    leaves the machine), with the older `installed` packages installed by dpkg."""
    apt = root / "etc" / "apt"
    (apt / "sources.list").write_text("")
    for old in (apt / "sources.list.d").glob("*"):
        old.unlink()
    keyrings = apt / "keyrings"
    keyrings.mkdir(exist_ok=True)
    (keyrings / "clonefleet-test.gpg").write_bytes(repo.keyring.read_bytes())
    (apt / "sources.list.d" / "clonefleet-test.sources").write_text(
        repo.sources("/etc/apt/keyrings/clonefleet-test.gpg"))
    staging = root / "tmp" / "cftest-debs"
    staging.mkdir(parents=True, exist_ok=True)
    debs = [build_deb(staging, package) for package in installed]
    chroot(root, "dpkg", "-i", *[f"/tmp/cftest-debs/{deb.name}" for deb in debs])
    if refresh:
        chroot(root, "apt-get", "-q", "update")


def chroot(root: Path, *command: str) -> str:
    result = subprocess.run(["chroot", str(root), *command], capture_output=True, text=True,
                            timeout=300, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                              "LANG": "C.UTF-8",
                                              "DEBIAN_FRONTEND": "noninteractive"})
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed in {root}: "
                             f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout


@pytest.fixture(scope="session")
def apt_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AptRepo]:
    repo = AptRepo(tmp_path_factory.mktemp("apt-repo"),
                   {"bookworm-security": SECURITY_UPGRADES, "bookworm-updates": OTHER_UPGRADES})
    repo.start()
    try:
        yield repo
    finally:
        repo.stop()


# /var/tmp: kept across reboots and test runs, unlike pytest's temporary folders.
ROOTS = Path(os.environ.get("CLONEFLEET_TEST_ROOTS", "/var/tmp/clonefleet-test-roots"))
ROOT_PACKAGES = "needrestart,ca-certificates"
MIRROR = "http://deb.debian.org/debian"


def ensure_debian_root() -> Path:
    """The shared Debian 12 minbase root, debootstrapped once (about 2 minutes)."""
    root = ROOTS / "bookworm-minbase"
    if (root / "etc" / "debian_version").exists():
        return root
    ROOTS.mkdir(parents=True, exist_ok=True)
    with (ROOTS / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "etc" / "debian_version").exists():
            partial = ROOTS / "bookworm-minbase.partial"
            shutil.rmtree(partial, ignore_errors=True)
            subprocess.run(["debootstrap", "--variant=minbase", f"--include={ROOT_PACKAGES}",
                            "bookworm", str(partial), MIRROR], check=True,
                           capture_output=True, timeout=1200)
            partial.rename(root)
    return root


@pytest.fixture(scope="session")
def debian_root() -> Path:
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        pytest.skip("Debian root tests need root and debootstrap (scripts/setup)")
    return ensure_debian_root()


@contextmanager
def sshd_chroot_folder() -> Iterator[Path]:
    """A fresh folder for node overlays that sshd accepts as a ChrootDirectory's parent:
    every component of the path root-owned and writable by root alone (not /tmp or
    /var/tmp, which everyone may write to). Removed afterwards."""
    parent = Path("/run/clonefleet-test-nodes")
    parent.mkdir(mode=0o755, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
