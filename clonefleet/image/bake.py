"""Bake a node's deploy into its node layer, on the controller, before the node exists.

The deploy that makes a full clone is run offline (`clonefleet_offline`: files written,
units enabled, nothing started) against the node layer's root filesystem through pyinfra's
`@chroot` connector, with the node's own host data. On the controller that takes seconds; on
the node, under emulation or on a slow box, the same work took minutes. The node then boots
with its configuration in place and its services enabled, and its first deploy over SSH
finds little left to change: what needs the running node (starting services, the database
cluster, the drain token, the hooks' records).

Secrets in the host data end up in the layer's files, so the layer is built in a folder the
caller keeps off the controller's disks (`clonefleet.provision` mounts a tmpfs), and
pyinfra's own temporary copies go to `tmp_dir` (the same place).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clonefleet.child_run import run_child
from clonefleet.errors import InstallError
from clonefleet.image.chroot import run, unmount

BAKE_TIMEOUT = 900
# A tmpfs takes memory only for what is written: the layer (with its initramfs, unpacked
# once to be checked) needs a few hundred MB; the limit only stops a runaway.
MEMORY_FOLDER_SIZE = "4g"


def chroot_host_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """A node's host data for its deploy applied offline in a chroot on the controller."""
    baked = {key: value for key, value in data.items() if not key.startswith("ssh_")}
    baked["clonefleet_offline"] = True
    # An unlocker's identity is made on the node and never leaves it: the deploy on the node
    # installs the unlocker, not a layer made on the controller.
    baked["clonefleet_unlocker"] = False
    return baked


@contextmanager
def in_memory_folder(parent: Path) -> Iterator[Path]:
    """A new folder under `parent` with a tmpfs mounted on it (mode 700), so what is
    written there never reaches a disk; unmounted and removed afterwards, whatever happens."""
    folder = Path(tempfile.mkdtemp(prefix="clonefleet-", dir=parent))
    try:
        run(["mount", "-t", "tmpfs", "-o", f"size={MEMORY_FOLDER_SIZE},mode=700",
             "clonefleet-layer", str(folder)], what="tmpfs mount for the node layer")
        try:
            yield folder
        finally:
            unmount(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class BakeResult:
    changed: int  # operations that changed something in the layer
    unchanged: int
    timings: dict[str, object]


def bake_deploy(fleet_path: Path, node: str, root: Path, deploy_ref: str,
                tmp_dir: Path, timeout: float = BAKE_TIMEOUT) -> BakeResult:
    """Apply `deploy_ref` offline to the root filesystem at `root` as node `node`; raise
    InstallError naming each failed operation with its own error."""
    run = run_child("clonefleet.deploy_runner", fleet_path,
                    ["--deploy", deploy_ref, "--chroot", str(root), node], timeout,
                    env={"TMPDIR": str(tmp_dir)})
    if run.data is None or node not in run.data:
        tail = " / ".join(run.tail(5))
        raise InstallError(f"{node}: could not bake {deploy_ref} into the node layer: {tail}")
    result = run.data[node]
    if result["failed"]:
        errors = "; ".join(result["errors"]) or "failed without output"
        raise InstallError(f"{node}: baking {deploy_ref} into the node layer failed: {errors}"
                           " (nothing was written to the node)")
    return BakeResult(changed=len(result["changed"]), unchanged=int(result["unchanged"]),
                      timings=dict(result.get("timings") or {}))
