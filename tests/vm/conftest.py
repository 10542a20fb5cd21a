"""Lab VM fixtures: a private fleet state per test module, the shared image cache, the real
CLI in a subprocess, and pinned SSH into nodes. VMs are destroyed at teardown; a failing
test shows each VM's console tail."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clonefleet.fakes import serve as fakes
from clonefleet.fakes.machines import LabMachines
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.keystore import Keystore
from clonefleet.providers.base import SshAccess
from clonefleet.providers.lab import LabProvider
from clonefleet.ssh import RemoteShell
from clonefleet.state import StateStore, open_store

ROOT = Path(__file__).resolve().parents[2]
LAB_FLEET = ROOT / "inventory" / "lab.toml"


@dataclass
class Lab:
    fleet: Fleet
    state_root: Path
    env: dict[str, str]
    fleet_path: Path = LAB_FLEET

    @property
    def state_dir(self) -> Path:
        return self.state_root / self.fleet.name

    @property
    def store(self) -> StateStore:
        return open_store(self.state_dir, self.fleet.state)

    @property
    def provider(self) -> LabProvider:
        return LabProvider(self.state_dir, log=lambda message: None)

    @property
    def keystore(self) -> Keystore:
        return Keystore(self.state_dir / "keystore", Path(self.env["CLONEFLEET_AGE_KEY"]))

    def cli(self, *args: str, check: bool = True,
            timeout: float = 2400) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "clonefleet", "--fleet",
                                 str(self.fleet_path), *args], env=self.env,
                                capture_output=True, text=True,
                                timeout=timeout, cwd=ROOT)
        if check and result.returncode != 0:
            raise AssertionError(f"clonefleet {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}{self.consoles()}")
        return result

    def shell(self, node: str) -> RemoteShell:
        store = self.store
        access = store.get_fact(node, "ssh")
        return RemoteShell(SshAccess(access["host"], access["port"]),
                           self.state_dir / "id_ed25519",
                           pinned=store.get_fact(node, "ssh_host_key"), what=node)

    def consoles(self) -> str:
        text = ""
        for server in self.provider.list():
            node = self.fleet.node(server.node)
            text += f"\n{self.provider.console_tail(node)}"
        return text


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from open_lab(tmp_path_factory)


def open_lab(tmp_path_factory: pytest.TempPathFactory,
             fleet: Callable[[Path], Path] = lambda state_root: LAB_FLEET,
             env_extra: dict[str, str] | None = None) -> Iterator[Lab]:
    """A private fleet state folder; `fleet(state_root)` returns the fleet file to use
    (written there if it depends on the test, e.g. a fake API's URL)."""
    if os.geteuid() != 0:
        pytest.fail("lab VM tests need root (image build, chroot); run scripts/test as root")
    state_root = tmp_path_factory.mktemp("fleet-state")
    env = dict(os.environ)
    env.update({"CLONEFLEET_STATE_DIR": str(state_root),
                "CLONEFLEET_AGE_KEY": str(state_root / "age.key"), **(env_extra or {})})
    old_env = {key: os.environ.get(key) for key in ("CLONEFLEET_STATE_DIR",
                                                     "CLONEFLEET_AGE_KEY", *(env_extra or {}))}
    os.environ.update({key: env[key] for key in old_env})
    fleet_path = fleet(state_root)
    lab = Lab(load_fleet(fleet_path), state_root, env, fleet_path)
    try:
        yield lab
    finally:
        for server in lab.provider.list():
            lab.provider.delete(server.node)
        for key, value in old_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def open_lab_behind_fakes(tmp_path_factory: pytest.TempPathFactory,
                          fleet: Callable[[Path], tuple[Path, Path]], providers: tuple[str, ...],
                          env_extra: dict[str, str]) -> Iterator[Lab]:
    """`open_lab` with the API fakes of `providers` serving: `fleet(state_root)` writes and
    returns (the fleet file the machine room builds each server's VM from, the one clonefleet
    is given), usually the same file. Each fake's servers are lab VMs of the fleet's state
    folder: Robot's and OVH's exist from the start, powered off; Cloud's when the driver
    creates them. The fakes stop after the VMs are gone."""
    started: list[fakes.Served] = []

    def serve(state_root: Path) -> Path:
        truth, given = fleet(state_root)
        loaded = load_fleet(truth)
        for provider in providers:
            machines = LabMachines(state_root / loaded.name, nodes={
                node.name: node for node in fakes.provider_nodes(loaded, provider)})
            served = fakes.build(loaded, provider, machines, delay=0.5)
            served.fake.start()
            started.append(served)
        return given

    try:
        yield from open_lab(tmp_path_factory, serve, env_extra)
    finally:
        for served in started:
            served.fake.shutdown()
