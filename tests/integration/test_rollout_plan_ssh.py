"""`clonefleet update --dry-run`'s plan, read with pyinfra over real sshd from Debian roots.

Each node is a real OpenSSH server on loopback whose sessions are chrooted (`ChrootDirectory`)
into its own overlay of a Debian 12 root (tests/apt_repo_fixture.py), pointed at a signed
local apt repository served on loopback with a security suite (one package asks for a reboot
in its postinst, as Debian's kernels do) and an updates suite. The control plane's own
inventory (pinned host keys, strict checking) reaches them; nothing leaves the machine.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from apt_repo_fixture import (  # noqa: F401  (fixtures)
    INSTALLED,
    AptRepo,
    Package,
    apt_repo,
    chroot,
    debian_root,
    point_root_at,
    sshd_chroot_folder,
)
from fleet_text import ASH, FSN, FleetNode, fleet_toml
from sshd_fixture import Sshd

from clonefleet.image.chroot import mounted, overlay
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.rollout.plan import make_plan
from clonefleet.state import StateStore, open_store

pytestmark = pytest.mark.integration


def fleet_text(ssh_key: Path) -> str:
    return fleet_toml(
        "rolltest", "rolltest.clonefleet.test", [FSN, replace(ASH, min_active=0)],
        [FleetNode("fsn-1", "fsn", "R-FSN1"), FleetNode("fsn-2", "fsn", "R-FSN2"),
         FleetNode("ash-1", "ash", "R-ASH1")],
        settings={"ssh_key": str(ssh_key)})


@dataclass
class Node:
    root: Path
    sshd: Sshd


@dataclass
class RootFleet:
    fleet: Fleet
    store: StateStore
    nodes: dict[str, Node]


@contextmanager
def served_roots(base: Path, folder: Path, repo: AptRepo,
                 installed: dict[str, tuple[Package, ...]]) -> Iterator[dict[str, Node]]:
    """Per node: an overlay of the Debian root pointed at `repo` with `installed`, served by
    its own chrooted sshd; every sshd accepts the first one's client key."""
    with ExitStack() as stack:
        nodes: dict[str, Node] = {}
        for name, packages in installed.items():
            merged, _ = stack.enter_context(overlay(base, folder / name))
            stack.enter_context(mounted(merged))
            point_root_at(merged, repo, packages)
            sshd = Sshd(folder / f"sshd-{name}", extra_config=f"ChrootDirectory {merged}\n")
            stack.callback(sshd.stop)
            nodes[name] = Node(merged, sshd)
        first = next(iter(nodes.values())).sshd
        for node in nodes.values():
            (node.sshd.client_key.parent / "authorized_keys").write_text(
                (first.client_key.parent / "authorized_keys").read_text())
        yield nodes


@pytest.fixture
def root_fleet(debian_root: Path, apt_repo: AptRepo, tmp_path: Path,  # noqa: F811
               monkeypatch: pytest.MonkeyPatch) -> Iterator[RootFleet]:
    monkeypatch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "state"))
    installed = {"fsn-1": INSTALLED,
                 "ash-1": tuple(package for package in INSTALLED
                                if package.name == "cf-extra")}
    with sshd_chroot_folder() as folder, \
            served_roots(debian_root, folder, apt_repo, installed) as nodes:
        key = nodes["fsn-1"].sshd.client_key
        key.with_name(key.name + ".pub").write_text(
            (key.parent / "authorized_keys").read_text())
        path = tmp_path / "inventory" / "rolltest.toml"
        path.parent.mkdir()
        path.write_text(fleet_text(key))
        fleet = load_fleet(path)
        store = open_store(tmp_path / "state" / "rolltest")
        for name in fleet.nodes:
            store.set_state(name, "active", actor="test")
        for name, node in nodes.items():
            store.set_fact(name, "ssh", {"host": "127.0.0.1", "port": node.sshd.port})
            store.set_fact(name, "ssh_host_key", node.sshd.host_key)
        yield RootFleet(fleet, store, nodes)


def test_plan_reads_security_upgrades_and_reboot_need_over_ssh(root_fleet: RootFleet) -> None:
    plan = make_plan(root_fleet.fleet, root_fleet.store)
    fsn = plan.node("fsn-1")
    assert fsn.error == ""
    assert {(change.name, change.old_version, change.new_version, change.suites)
            for change in fsn.packages} == {
        ("cf-tool", "1.0", "1.1", ("stable-security",)),
        ("libcf1", None, "1.1", ("stable-security",)),
        ("linux-image-cftest", "1.0", "2.0", ("stable-security",))}
    assert fsn.skipped_upgrades == 1  # cf-extra, from stable-updates
    assert fsn.action == "reboot"
    assert "upgrades linux-image-cftest" in fsn.reboot_reasons
    assert fsn.needrestart
    ash = plan.node("ash-1")
    assert ash.packages == () and ash.skipped_upgrades == 1
    assert "reboot" not in ash.action
    assert plan.node("fsn-2").error.startswith("no SSH address is recorded")
    assert plan.batches.batches == (("fsn-1",),)
    assert [node.node for node in plan.unreadable] == ["fsn-2"]


def test_all_includes_other_suites_and_batches_regions_together(
        root_fleet: RootFleet) -> None:
    plan = make_plan(root_fleet.fleet, root_fleet.store, ["fsn-1", "ash-1"], everything=True,
                     batch_size=2, refresh=False)
    assert [change.name for change in plan.node("ash-1").packages] == ["cf-extra"]
    assert "cf-extra" in {change.name for change in plan.node("fsn-1").packages}
    assert plan.node("ash-1").action == "restart"
    assert [sorted(batch) for batch in plan.batches.batches] == [["ash-1", "fsn-1"]]


def test_after_the_upgrade_the_reboot_flag_alone_makes_the_node_reboot(
        root_fleet: RootFleet) -> None:
    chroot(root_fleet.nodes["fsn-1"].root, "apt-get", "-y", "-q", "dist-upgrade")
    plan = make_plan(root_fleet.fleet, root_fleet.store, ["fsn-1"], refresh=False)
    fsn = plan.node("fsn-1")
    assert fsn.packages == ()
    assert fsn.reboot_reasons[0] == ("/var/run/reboot-required is present (asked by "
                                     "linux-image-cftest)")
    assert plan.batches.batches == (("fsn-1",),)


def test_a_node_answering_with_another_host_key_is_refused_and_not_batched(
        root_fleet: RootFleet) -> None:
    other = root_fleet.nodes["fsn-1"].sshd.host_key
    root_fleet.store.set_fact("ash-1", "ssh_host_key", other)
    plan = make_plan(root_fleet.fleet, root_fleet.store, ["fsn-1", "ash-1"], everything=True,
                     batch_size=2, refresh=False)
    error = plan.node("ash-1").error
    assert error.startswith("cannot connect: ") and "known_hosts" in error
    assert plan.batches.scheduled == ["fsn-1"]


def test_update_dry_run_command_prints_the_plan_as_json(root_fleet: RootFleet) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "clonefleet", "--fleet", str(root_fleet.fleet.path), "--json",
         "update", "--dry-run", "--no-refresh", "fsn-1", "ash-1"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["batches"] == [["fsn-1"]]
    assert document["expected_reboots"] == ["fsn-1"]
    assert document["selection"] == "security updates"
    fsn = next(node for node in document["nodes"] if node["node"] == "fsn-1")
    assert fsn["action"] == "reboot" and fsn["skipped_upgrades"] == 1
    text = subprocess.run(
        [sys.executable, "-m", "clonefleet", "--fleet", str(root_fleet.fleet.path), "update",
         "--dry-run", "--no-refresh"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert text.returncode == 30  # fsn-2 has no address
    assert "linux-image-cftest 1.0 → 2.0 (stable-security)" in text.stdout
    assert "batch 1: fsn-1" in text.stdout
    assert text.stderr.strip() == "error: update plan failed on 1 of 3 nodes: fsn-2"


def test_a_node_whose_package_lists_cannot_be_refreshed_says_why_and_is_not_batched(
        root_fleet: RootFleet) -> None:
    from pdns_fixture import free_port

    sources = root_fleet.nodes["fsn-1"].root / "etc/apt/sources.list.d/clonefleet-test.sources"
    sources.write_text(re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{free_port()}",
                              sources.read_text()))
    plan = make_plan(root_fleet.fleet, root_fleet.store, ["fsn-1", "ash-1"])
    error = plan.node("fsn-1").error
    assert error.startswith("upgrades failed (exit 100): ")
    assert "127.0.0.1" in error
    assert plan.batches.batches == () and plan.node("ash-1").error == ""
