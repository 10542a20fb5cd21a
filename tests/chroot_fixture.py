"""Full-clone deploys run against the cached node image in a chroot, for fast tests.

Each node gets an overlayfs over the image's root filesystem (lower layer shared, read-only;
its own upper layer), with /proc, /sys and /dev bound in, and the real deploy runs there
through pyinfra's `@chroot` connector with the host data the control plane computes
(`clonefleet.pyinfra_inventory.host_data`) plus `clonefleet_offline=True`: files are written
and units enabled, nothing is started. The upper layer then holds exactly what the deploy
changed on that node.

State (state store, secrets) lives in the test's folder and the keystore identity too
(`CLONEFLEET_AGE_KEY`), so nothing touches a real fleet. The image build is cached and shared
(`clonefleet.image.base.ensure_base_image`); a missing image is built first (minutes, once).

pyinfra needs gevent's monkey patching, which must not leak into pytest: a deploy runs in a
child process, `python tests/chroot_fixture.py SPEC_JSON`, and writes its results as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_TIMEOUT = 300

# Two nodes in two regions: everything that may differ between their deploys is node data.
TWO_REGION_FLEET = """
[fleet]
name = "clonetest"
domain = "clonetest.clonefleet.test"
allowed_tcp_ports = [22, 53]
allowed_udp_ports = [53]

[[routed]]
name = "edge"
ttl = 30

[[admins]]
name = "ops"
keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBzWj8MqpDHUCJBQLPG1pVNbEZAx0BLzGfzrVz8ObUH5 ops"]

[regions.fsn]
provider = "lab"
location = "Falkenstein, DE"
latitude = 50.47
longitude = 12.37

[regions.ash]
provider = "lab"
location = "Ashburn, US"
latitude = 39.04
longitude = -77.49

[nodes.fsn-1]
region = "fsn"
disks = ["T-FSN1"]
ipv4 = "192.0.2.11"
ipv6 = "2001:db8:1::11"

[nodes.ash-1]
region = "ash"
disks = ["T-ASH1"]
ipv4 = "198.51.100.21"
ipv6 = "2001:db8:2::21"
"""

# What a deploy run leaves behind that is not configuration: caches, logs, pyinfra's own
# temporary files. Left out of node comparisons.
NOISE = ("tmp/", "var/tmp/", "var/cache/", "var/log/", "root/.cache/", "var/lib/apt/",
         "var/lib/dpkg/lock", "run/")


@dataclass
class ChrootNode:
    name: str
    root: Path  # the merged tree the deploy wrote to
    upper: Path  # only what the deploy changed
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeployResult:
    failed: bool
    changed: list[str]
    succeeded: list[str]
    errors: list[str]


@dataclass(frozen=True)
class ChrootFleet:
    fleet_path: Path
    state_dir: Path  # the fleet's state folder (store, secrets), under a temporary folder
    workdir: Path


@dataclass
class DeployedNodes:
    fleet: ChrootFleet
    nodes: dict[str, ChrootNode]
    first: dict[str, DeployResult]  # the first deploy's results


def control_plane_host_data(fleet_path: Path, state_dir: Path,
                            names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each node's host data as `clonefleet deploy` computes it, for a chroot, offline."""
    from clonefleet import nodefacts
    from clonefleet.inventory import load_fleet
    from clonefleet.providers.base import ServerInfo, SshAccess
    from clonefleet.pyinfra_inventory import host_data
    from clonefleet.state import open_store

    fleet = load_fleet(fleet_path)
    store = open_store(state_dir)
    for name in names:  # an address, so the node is listed; the chroot never uses it
        if store.get_fact(name, nodefacts.SSH_ACCESS) is None:
            nodefacts.record_server(store, name, ServerInfo(
                node=name, server_id=f"chroot-{name}", status="disk",
                ssh=SshAccess("127.0.0.1", 22), unlock=SshAccess("127.0.0.1", 2222)))
    hosts = dict(host_data(fleet, store, state_dir, list(names)))
    result = {}
    for name, data in hosts.items():
        data = {key: value for key, value in data.items() if not key.startswith("ssh_")}
        data["clonefleet_offline"] = True
        result[name] = data
    return result


@contextmanager
def chroot_nodes(image_root: Path, workdir: Path, names: Sequence[str]) -> Iterator[
        dict[str, ChrootNode]]:
    """An overlay of the image per node, with /proc, /sys and /dev bound; all unmounted
    afterwards (binds first, then the overlays)."""
    from clonefleet.image.chroot import mounted, overlay

    with ExitStack() as stack:
        nodes = {}
        for name in names:
            merged, upper = stack.enter_context(overlay(image_root, workdir / name))
            stack.enter_context(mounted(merged))
            nodes[name] = ChrootNode(name, merged, upper)
        yield nodes


def run_deploy(nodes: Sequence[ChrootNode], deploy: str = "deploys.full:node",
               overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, DeployResult]:
    """Run `deploy` on the nodes at once, in a child process; results per node name."""
    out = Path(nodes[0].root).parent / f"deploy-{os.getpid()}.json"
    spec = {"deploy": deploy, "out": str(out), "hosts": [
        [node.name, str(node.root), {**node.data, **(overrides or {}).get(node.name, {})}]
        for node in nodes]}
    completed = subprocess.run([sys.executable, __file__, json.dumps(spec)], cwd=ROOT,
                               capture_output=True, text=True, timeout=DEPLOY_TIMEOUT)
    if completed.returncode != 0 or not out.exists():
        raise RuntimeError(f"chroot deploy crashed (exit {completed.returncode}):\n"
                           f"{completed.stderr[-3000:]}")
    results = json.loads(out.read_text())
    out.unlink()
    return {name: DeployResult(**value) for name, value in results.items()}


def _main(spec: dict[str, Any]) -> None:
    from gevent import monkey

    monkey.patch_all()
    import contextlib

    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all, disconnect_all
    from pyinfra.api.deploy import add_deploy
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.operations import run_ops
    from pyinfra.api.state import StateStage

    sys.path.insert(0, str(ROOT))
    import importlib

    module_name, _, function_name = spec["deploy"].partition(":")
    deploy_function = getattr(importlib.import_module(module_name), function_name)
    by_root = {}
    hosts = []
    for name, root, data in spec["hosts"]:
        by_root[f"@chroot{root}"] = name
        hosts.append((f"@chroot/{root.lstrip('/')}", data))
    inventory = Inventory((hosts, {}))
    state = State(inventory=inventory, config=Config(PARALLEL=len(hosts)))
    state.cwd = str(ROOT)
    state.set_stage(StateStage.Connect)
    connect_all(state)
    state.set_stage(StateStage.Prepare)
    add_deploy(state, deploy_function)
    state.set_stage(StateStage.Execute)
    with contextlib.suppress(PyinfraError):
        run_ops(state)
    results = {}
    for host in inventory:
        changed, succeeded, errors = [], [], []
        for op_hash in state.get_op_order():
            if op_hash not in state.ops[host]:
                continue
            meta = state.ops[host][op_hash].operation_meta
            name = ", ".join(state.op_meta[op_hash].names) or op_hash
            if not meta.is_complete() or not meta.did_succeed(_raise_if_not_complete=False):
                errors.append(name)
                continue
            # As the deploy runner names them: each name pyinfra gives the operation's hash
            # (two hosts' different operations can share one) and the host's own `name=`.
            op_data = state.ops[host][op_hash]
            own = op_data.global_arguments.get("name")
            succeeded.extend(sorted({*state.op_meta[op_hash].names, *([own] if own else [])}))
            if meta.did_change():
                changed.append(name)
        results[by_root.get(host.name, host.name)] = {
            "failed": host in state.failed_hosts or bool(errors), "changed": changed,
            "succeeded": succeeded, "errors": errors}
    state.set_stage(StateStage.Disconnect)
    disconnect_all(state)
    Path(spec["out"]).write_text(json.dumps(results))


# Comparing two nodes' upper layers.

def tree(upper: Path) -> dict[str, tuple[str, bytes]]:
    """Relative path → (kind and metadata, content) of everything in an upper layer."""
    entries = {}
    for path in sorted(upper.rglob("*")):
        relative = path.relative_to(upper).as_posix()
        if relative.startswith(NOISE) or f"{relative}/".startswith(NOISE):
            continue
        info = path.lstat()
        meta = f"{oct(info.st_mode)} {info.st_uid}:{info.st_gid}"
        if path.is_symlink():
            entries[relative] = (f"link {meta}", os.readlink(path).encode())
        elif path.is_file():
            entries[relative] = (f"file {meta}", path.read_bytes())
        elif path.is_dir():
            entries[relative] = (f"dir {meta}", b"")
        else:  # an overlayfs whiteout (a deleted file) or a device
            entries[relative] = (f"special {meta} {info.st_rdev}", b"")
    return entries


def without_node_data(content: bytes, values: dict[str, str]) -> bytes:
    """`content` with each node-data value replaced by its placeholder (longest first)."""
    for value, placeholder in sorted(values.items(), key=lambda item: -len(item[0])):
        content = content.replace(value.encode(), placeholder.encode())
    return content


def packages(root: Path) -> str:
    return subprocess.run(["chroot", str(root), "dpkg-query", "-W",
                           "-f=${Package} ${Version} ${Status}\n"], capture_output=True,
                          text=True, check=True, timeout=60).stdout


if __name__ == "__main__":
    _main(json.loads(sys.argv[1]))
