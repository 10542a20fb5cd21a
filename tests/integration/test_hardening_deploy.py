"""The hardening deploy against the node image's root filesystem, through pyinfra's @chroot
connector in a copy-on-write overlay (tests/chroot_fixture.py; the cached image is only read),
offline (`clonefleet_offline`): files written and units enabled, nothing started.

Needs root (overlay and bind mounts) and debootstrap: a missing node image is built first
(minutes, once; `clonefleet.image.base.ensure_base_image`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from chroot_fixture import DeployResult, chroot_nodes, run_deploy

from clonefleet.image.base import SECURITY_SOURCES
from clonefleet.image.chroot import CHROOT_ENV
from deploys.hardening import MODPROBE_FILE, NEVER_DISABLED, SYSCTL_FILE

pytestmark = pytest.mark.integration

DEPLOY = "deploys.hardening:hardening"


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[Path, Path, DeployResult, DeployResult]]:
    """The overlay root (and its upper layer) after the base deploy (its sshd options) and two
    runs of the hardening deploy, with both hardening runs' results."""
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        pytest.skip("needs root (overlay and bind mounts) and debootstrap (scripts/setup)")
    from clonefleet.image.base import ensure_base_image
    from clonefleet.paths import cache_dir

    image = ensure_base_image(cache_dir(), lambda message: None).root
    work = tmp_path_factory.mktemp("hardening-overlay")
    with chroot_nodes(image, work, ["node"]) as nodes:
        node = nodes["node"]
        node.data = {"clonefleet_offline": True}
        base = run_deploy([node], "deploys.base:base")["node"]
        assert base.errors == []
        first = run_deploy([node], DEPLOY)["node"]
        second = run_deploy([node], DEPLOY)["node"]
        yield node.root, node.upper, first, second


def chroot(root: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chroot", str(root), "/bin/sh", "-c", command], capture_output=True,
                          text=True, env=CHROOT_ENV, timeout=120)


def read_settings(path: Path, separator: str) -> dict[str, str]:
    settings = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition(separator)
            settings[key.strip()] = value.strip()
    return settings


def test_hardening_deploy_in_a_chroot_succeeds_and_changes_files(hardened) -> None:
    _root, _upper, first, _second = hardened
    assert first.errors == []
    assert any("sysctl" in name for name in first.changed)


def test_second_hardening_run_changes_nothing(hardened) -> None:
    _root, _upper, _first, second = hardened
    assert second.errors == []
    assert second.changed == []


def test_the_image_already_has_the_security_source_the_deploy_keeps(hardened) -> None:
    root, upper, _first, _second = hardened
    assert "-security main" in (root / SECURITY_SOURCES.lstrip("/")).read_text()
    assert not (upper / SECURITY_SOURCES.lstrip("/")).exists()  # same text: left alone


def test_sysctl_file_hardens_without_forwarding_or_disabling_ipv6(hardened) -> None:
    root, _upper, _first, _second = hardened
    values = read_settings(root / SYSCTL_FILE.lstrip("/"), "=")
    assert values["net.ipv4.ip_forward"] == "0"
    assert values["kernel.kptr_restrict"] == "2"
    assert values["fs.suid_dumpable"] == "0"
    assert values["net.ipv4.conf.all.accept_redirects"] == "0"
    assert values["net.ipv4.tcp_syncookies"] == "1"
    assert not any("disable_ipv6" in key for key in values)
    # Applied last at boot (systemd-sysctl: by file name, later wins), so no package's file
    # undoes a value.
    others = [path.name for folder in ("etc/sysctl.d", "usr/lib/sysctl.d", "lib/sysctl.d")
              for path in (root / folder).glob("*.conf")]
    assert max(others) == Path(SYSCTL_FILE).name


def test_unused_modules_are_disabled_and_needed_ones_are_not(hardened) -> None:
    root, _upper, _first, _second = hardened
    text = (root / MODPROBE_FILE.lstrip("/")).read_text()
    for module in ("dccp", "sctp", "rds", "tipc", "cramfs", "usb-storage"):
        assert f"install {module} /bin/true" in text
        assert f"blacklist {module}" in text
    named = {line.split()[1] for line in text.splitlines()
             if line.startswith(("install ", "blacklist "))}
    assert not named & NEVER_DISABLED


def test_modprobe_still_loads_what_a_node_needs_and_nothing_it_disabled(hardened) -> None:
    root, _upper, _first, _second = hardened
    kernel = next((root / "lib/modules").iterdir()).name  # the image's, not the controller's

    def plan(module: str) -> str:  # what `modprobe MODULE` would do, without doing it
        result = chroot(root, f"modprobe -S {kernel} --show-depends {module}")
        return result.stdout + result.stderr

    for module in ("wireguard", "dm_crypt", "raid1", "vfat", "virtio_net", "e1000e", "igb"):
        shown = plan(module)
        assert f"/{module.replace('_', '-')}.ko" in shown.replace("_", "-"), shown
        assert "/bin/true" not in shown, (module, shown)
    assert "install /bin/true" in plan("sctp")


def test_core_dumps_umask_banner_and_audit_rules_are_written(hardened) -> None:
    root, _upper, _first, _second = hardened
    login_defs = read_settings(root / "etc/login.defs", "\t")
    assert login_defs["UMASK"] == "027"
    assert "* hard core 0" in (root / "etc/security/limits.d/50-clonefleet.conf").read_text()
    assert "Storage=none" in (root / "etc/systemd/coredump.conf.d/50-clonefleet.conf"
                              ).read_text()
    assert "Authorized access only" in (root / "etc/issue.net").read_text()
    assert "-k identity" in (root / "etc/audit/rules.d/50-clonefleet.rules").read_text()
    assert chroot(root, "systemctl is-enabled auditd.service").stdout.strip() == "enabled"
    assert (root / "etc/cron.d").stat().st_mode & 0o777 == 0o700
    assembler = root / "usr/bin/x86_64-linux-gnu-as"
    assert assembler.stat().st_mode & 0o777 == 0o750


def test_sshd_config_is_valid_and_keeps_key_only_root_login(hardened) -> None:
    root, _upper, _first, _second = hardened
    assert "LogLevel VERBOSE" in (root / "etc/ssh/sshd_config.d/50-clonefleet.conf").read_text()
    # The image carries no host keys (they are per node) and no privilege separation folder.
    prepared = chroot(root, "ssh-keygen -A && mkdir -p /run/sshd")
    assert prepared.returncode == 0, prepared.stderr
    checked = chroot(root, "sshd -t -f /etc/ssh/sshd_config")
    assert checked.returncode == 0, checked.stderr
    effective = chroot(root, "sshd -T -f /etc/ssh/sshd_config "
                             "-C user=root,host=controller,addr=192.0.2.1")
    assert effective.returncode == 0, effective.stderr
    options = dict(line.split(" ", 1) for line in effective.stdout.splitlines() if " " in line)
    assert options["permitrootlogin"] == "without-password"  # = prohibit-password
    assert options["pubkeyauthentication"] == "yes"
    assert options["passwordauthentication"] == "no"
    assert options["port"] == "22"
