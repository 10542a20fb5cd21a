"""Run deploys on nodes (through `clonefleet.deploy_runner` in a child process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from clonefleet.errors import DeployError
from clonefleet.paths import PROJECT_ROOT


@dataclass(frozen=True)
class DeployResult:
    node: str
    connected: bool
    failed: bool
    changed: tuple[str, ...]
    unchanged: int
    errors: tuple[str, ...]  # "operation: its own error", in order
    not_run: tuple[str, ...] = ()  # operations skipped after the first failure
    # The node's host key was not the one pinned in the fleet's known_hosts (or none was).
    host_key_refused: bool = False


def describe_failure(result: DeployResult) -> str:
    """One line: each failed operation with its own error, then how many never ran."""
    text = "; ".join(result.errors) or "could not connect"
    if result.not_run:
        count = len(result.not_run)
        text += f" ({count} later operation{'s' if count > 1 else ''} not run)"
    return text


def run_deploy(fleet_path: Path, nodes: list[str], deploy: str = "deploys.full:node",
               timeout: float = 1800) -> dict[str, DeployResult]:
    """Given nodes, apply `deploy` to them; return per-node results (never raises for a
    failed host: callers decide; raises DeployError when pyinfra itself could not run)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "results.json"
        process = subprocess.run(
            [sys.executable, "-m", "clonefleet.deploy_runner", "--fleet",
             str(Path(fleet_path).resolve()), "--deploy", deploy, "--out", str(out), *nodes],
            capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT)
        if os.environ.get("CLONEFLEET_VERBOSE"):
            sys.stderr.write(process.stderr)
        if not out.exists():
            tail = "\n".join((process.stdout + process.stderr).strip().splitlines()[-20:])
            raise DeployError(f"pyinfra could not run {deploy}: {tail}")
        data = json.loads(out.read_text())
    return {name: DeployResult(node=name, connected=value["connected"], failed=value["failed"],
                               changed=tuple(value["changed"]), unchanged=value["unchanged"],
                               errors=tuple(value["errors"]),
                               not_run=tuple(value.get("not_run", ())),
                               host_key_refused=bool(value.get("host_key_refused")))
            for name, value in data.items()}
