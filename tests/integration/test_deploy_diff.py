"""`clonefleet deploy --diff` through the real deploy runner and a real sshd: a changed template
shows its diff, secrets and 0600 files show no content, the node is left untouched, and once
deployed a second --diff finds nothing. Also `deploy` for nodes without an SSH address."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sshd_fixture import Sshd, sshd_fleet

from clonefleet.deploy import CHANGES_PENDING, run_deploy
from clonefleet.errors import NotProvisionedError
from clonefleet.inventory import load_fleet
from clonefleet.secrets import open_secrets
from clonefleet.state import open_store

pytestmark = pytest.mark.integration

DEPLOY = '''
import json
from io import StringIO
from pathlib import Path

from pyinfra.api import deploy
from pyinfra.operations import files, server

ROOT = {root!r}
TEMPLATE = {template!r}
VALUES = json.loads(Path({values!r}).read_text())


@deploy("diff test")
def configured():
    files.directory(name="app folder", path=ROOT, mode="755")
    files.template(name="app config", src=TEMPLATE, dest=f"{{ROOT}}/app.conf", mode="644",
                   port=VALUES["port"])
    files.put(name="api key file", src=StringIO(VALUES["key"] + "\\n"),
              dest=f"{{ROOT}}/api.key", mode="600")
    files.put(name="public file holding a secret", src=StringIO(f"key = {{VALUES['key']}}\\n"),
              dest=f"{{ROOT}}/public.conf", mode="644")
    server.shell(name="reload the app", commands=["true"], _if=lambda: False)
'''
TEMPLATE = "# the app\nname = demo\nport = {{ port }}\nworkers = 4\n"
OLD_KEY = "old-secret-0123456789abcdef"
NEW_KEY = "new-secret-fedcba9876543210"


class Setup:
    def __init__(self, tmp_path: Path, sshd: Sshd) -> None:
        self.root = tmp_path / "node" / "app"
        self.values = tmp_path / "values.json"
        (tmp_path / "app.conf.j2").write_text(TEMPLATE)
        (tmp_path / "difftest.py").write_text(DEPLOY.format(
            root=str(self.root), template=str(tmp_path / "app.conf.j2"),
            values=str(self.values)))
        self.fleet_path = sshd_fleet(tmp_path, sshd, "difftest")
        with self.fleet_path.open("a") as fleet_file:
            fleet_file.write('\n[nodes.fsn-2]\nregion = "fsn"\ndisks = ["B"]\n')
        self.state_dir = tmp_path / "state" / "difftest"
        store = open_store(self.state_dir)
        store.set_state("fsn-1", "booted", actor="test")
        store.set_fact("fsn-1", "ssh", {"host": "127.0.0.1", "port": sshd.port})
        store.set_fact("fsn-1", "ssh_host_key", sshd.host_key)
        self.env = {**os.environ, "CLONEFLEET_STATE_DIR": str(tmp_path / "state")}

    def set_values(self, port: int, key: str) -> None:
        self.values.write_text(json.dumps({"port": port, "key": key}))
        # The deploy's key is the node's secret, as a service would take it from the store.
        open_secrets(self.state_dir).put("fsn-1", "api_key", key)

    def clonefleet(self, *arguments: str, json_output: bool = False,
                   node: str = "fsn-1") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "clonefleet", "--fleet", str(self.fleet_path),
             *(["--json"] if json_output else []), "deploy", node, "--deploy",
             "difftest:configured", *arguments],
            env=self.env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)

    def deploy(self) -> None:
        os.environ["CLONEFLEET_STATE_DIR"] = self.env["CLONEFLEET_STATE_DIR"]
        result = run_deploy(load_fleet(self.fleet_path).path, ["fsn-1"],
                            "difftest:configured", timeout=300)["fsn-1"]
        assert not result.failed, result.errors


@pytest.fixture
def setup(tmp_path: Path, sshd: Sshd, monkeypatch: pytest.MonkeyPatch) -> Setup:
    monkeypatch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "state"))
    return Setup(tmp_path, sshd)


def test_diff_shows_a_changed_template_hides_secrets_and_changes_nothing(setup: Setup) -> None:
    setup.set_values(8080, OLD_KEY)
    setup.deploy()
    setup.set_values(9090, NEW_KEY)
    before = {path.name: (path.read_text(), path.stat().st_mtime_ns)
              for path in setup.root.iterdir()}

    scripted = setup.clonefleet("--diff", json_output=True)

    assert scripted.returncode == CHANGES_PENDING, scripted.stderr
    node = json.loads(scripted.stdout)["fsn-1"]
    assert not node["failed"]
    changes = {change["operation"]: change for change in node["changes"]}
    assert set(changes) == {"diff test | app config", "diff test | api key file",
                            "diff test | public file holding a secret",
                            "diff test | reload the app"}
    assert [name for name, change in changes.items() if change["conditional"]] == \
        ["diff test | reload the app"]
    [config] = changes["diff test | app config"]["files"]
    assert config["path"] == str(setup.root / "app.conf") and config["hidden"] is None
    assert "-port = 8080\n+port = 9090\n" in config["diff"]
    assert config["diff"].startswith(f"--- {setup.root}/app.conf\n+++ {setup.root}/app.conf")
    [key_file] = changes["diff test | api key file"]["files"]
    assert (key_file["diff"], key_file["hidden"]) == (None, "mode 600")
    [public] = changes["diff test | public file holding a secret"]["files"]
    assert (public["diff"], public["hidden"]) == (None, "holds a secret")
    for secret in (OLD_KEY, NEW_KEY):
        assert secret not in scripted.stdout + scripted.stderr

    shown = setup.clonefleet("--dry-run")
    assert shown.returncode == CHANGES_PENDING, shown.stderr
    assert "fsn-1: 3 operations would change (1 more if needed), 1 unchanged" in shown.stdout
    assert "  ~ diff test | reload the app (only if an earlier change needs it)" in shown.stdout
    assert "    -port = 8080\n    +port = 9090\n" in shown.stdout
    assert f"{setup.root}/api.key: content differs (hidden: mode 600)" in shown.stdout
    for secret in (OLD_KEY, NEW_KEY):
        assert secret not in shown.stdout + shown.stderr

    after = {path.name: (path.read_text(), path.stat().st_mtime_ns)
             for path in setup.root.iterdir()}
    assert after == before  # the node is untouched
    assert "port = 8080" in (setup.root / "app.conf").read_text()


def test_diff_after_a_deploy_finds_nothing_and_exits_0(setup: Setup) -> None:
    setup.set_values(8080, OLD_KEY)
    setup.deploy()

    scripted = setup.clonefleet("--diff", json_output=True)
    shown = setup.clonefleet("--diff")

    assert scripted.returncode == 0, scripted.stderr
    node = json.loads(scripted.stdout)["fsn-1"]
    # The conditional reload alone is no change: its condition is another change.
    assert (node["failed"], node["changes"]) == (False, [])
    assert node["unchanged"] == 5
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == "fsn-1: nothing would change (5 unchanged)"


@pytest.mark.parametrize("arguments", [(), ("--diff",)])
def test_deploy_to_nodes_without_an_address_is_one_line_naming_them_and_the_fix(
        setup: Setup, arguments: tuple[str, ...]) -> None:
    refused = setup.clonefleet(*arguments, node="fsn-2")

    assert refused.returncode == NotProvisionedError.exit_code == 3
    assert "Traceback" not in refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("error: cannot deploy: no SSH address is recorded for fsn-2 "
                           "(never provisioned); provision them first "
                           "(clonefleet provision fsn-2)")
