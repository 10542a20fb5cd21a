"""Run a clonefleet module in a process of its own that writes its result as JSON to --out.

pyinfra needs gevent's monkey patching before anything else is imported, so deploys
(`clonefleet.deploy_runner`) and fact gathering (`clonefleet.rollout.gather`) run as
`python -m MODULE --fleet FLEET --out FILE ARGUMENTS...` in the project's folder. With
CLONEFLEET_VERBOSE set, the child's stderr (pyinfra's own log) is passed on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clonefleet.paths import PROJECT_ROOT


@dataclass(frozen=True)
class ChildRun:
    data: Any  # the JSON document the child wrote; None when it wrote none
    output: str  # its stdout, then its stderr

    def tail(self, lines: int) -> list[str]:
        """The last `lines` lines of the child's output: what to show when it wrote nothing."""
        return self.output.strip().splitlines()[-lines:]


def run_child(module: str, fleet_path: Path, arguments: Sequence[str],
              timeout: float, env: Mapping[str, str] | None = None) -> ChildRun:
    """`env`: variables set for the child on top of this process's environment."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        process = subprocess.run(
            [sys.executable, "-m", module, "--fleet", str(Path(fleet_path).resolve()),
             "--out", str(out), *arguments],
            capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT,
            env={**os.environ, **env} if env else None)
        if os.environ.get("CLONEFLEET_VERBOSE"):
            sys.stderr.write(process.stderr)
        data = json.loads(out.read_text()) if out.exists() else None
    return ChildRun(data, process.stdout + process.stderr)
