"""Several nodes prepared at once by the real deploy runner, each reading a fact on its own
in the middle of its deploy (a wait during which the others go on): every node is prepared
and deployed. pyinfra's state context is one for all greenlets; the runner once let the first
host to finish reset it under the others ("type object 'State' has no attribute 'config'").

The nodes are three tiny root folders (dash, ls and their libraries) behind pyinfra's @chroot
connector, in a child process, as the runner runs (it patches gevent in on import)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, shutil, subprocess, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import clonefleet.deploy_runner as runner
from clonefleet.lazy_host_data import LazyHostData
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import server

def tiny_root(folder):
    files = {"/bin/dash": "bin/sh", "/bin/ls": "bin/ls"}
    for binary in ("/bin/dash", "/bin/ls"):
        listed = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
        for line in listed.splitlines():
            path = line.split("=>")[-1].split("(")[0].strip()
            if path.startswith("/"):
                files[path] = path.lstrip("/")
    for source, target in files.items():
        (folder / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, folder / target)

@deploy("parallel")
def two_steps():
    server.shell(name="first", commands=["true"])
    host.get_fact(Command, command="echo one")  # read alone: the others prepare meanwhile
    server.shell(name="second", commands=["true"])

roots = [Path(sys.argv[2]) / name for name in ("a", "b", "c")]
for root in roots:
    tiny_root(root)
results = {}
runner._run_pyinfra([(f"@chroot{root}", {}) for root in roots], LazyHostData({}), two_steps,
                    False, None, results, {}, {})
print(json.dumps({name: [result["failed"], result["errors"]] for name, result in results.items()}))
"""


def test_nodes_prepared_at_once_are_all_deployed(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == 3
    for name, (failed, errors) in results.items():
        assert not failed and errors == [], (name, errors)
