"""An OVH dedicated server (the `ovh` driver against the local OVH fake, static network), the
one driver the lab fleet module (tests/vm/test_lab_fleet.py) does not drive. It is made to
fail mid-install (the fleet file names a disk serial its server does not have): the failure
is reported with its step and nothing is written; once the fleet file is fixed the same
command finishes it. Several nodes at once, one failing, are tests/unit/test_fleetrun.py's.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from clonefleet.fakes.serve import DEFAULT_CREDENTIALS

from .conftest import Lab, open_lab_behind_fakes

pytestmark = pytest.mark.vm
OVH = "gra-1"
GOOD_SERIAL, WRONG_SERIAL = "CFLAB-GRA1-A", "CFLAB-GRA1-X"
ENV = {f"OVH_{key.upper()}": value for key, value in DEFAULT_CREDENTIALS["ovh"].items()}
# The base and the smartwatch agent: this module proves the OVH driver's path; the full
# clone's services are proved on the lab fleet.
DEPLOY = ("--deploy", "deploys.full:base_node")

FLEET = """
[fleet]
name = "ovhlab"
domain = "ovhlab.clonefleet.test"
ssh_key = ""
allowed_tcp_ports = [22]

[providers.ovhlab]
driver = "ovh"
api_url = "http://127.0.0.1:{ovh_port}/1.0"
lab_routes = true

[regions.gra]
provider = "ovhlab"
location = "Gravelines, FR"
latitude = 50.99
longitude = 2.13

[nodes.gra-1]
region = "gra"
disks = ["{ovh_serial}"]
memory_mb = 2048
disk_size_gb = 8
ipv4 = "203.0.113.51"
service_name = "ns1051.ip-203-0-113.eu"

[nodes.gra-1.network]
address = "10.0.2.15"
prefix = 24
gateway = "10.0.2.2"
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    def fleet(state_root: Path) -> tuple[Path, Path]:
        port = free_port()
        # The machine room builds the server's VM from the right fleet file: its disk has
        # serial CFLAB-GRA1-A. The file clonefleet is given at first names another serial,
        # as a fleet file with a typo would.
        truth = state_root / "ovhlab-truth.toml"
        truth.write_text(FLEET.format(ovh_serial=GOOD_SERIAL, ovh_port=port))
        given = state_root / "ovhlab.toml"
        given.write_text(FLEET.format(ovh_serial=WRONG_SERIAL, ovh_port=port))
        return truth, given

    yield from open_lab_behind_fakes(tmp_path_factory, fleet, ("ovhlab",), ENV)


def test_a_node_failing_mid_install_is_finished_by_a_rerun_once_fixed(lab: Lab) -> None:
    first = lab.cli("--json", "provision", OVH, *DEPLOY, check=False)
    assert first.returncode == 5, f"{first.stdout}\n{first.stderr}{lab.consoles()}"
    assert "Traceback" not in first.stderr
    errors = [line for line in first.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and WRONG_SERIAL in errors[0], first.stderr
    # The OVH server booted its rescue system and stopped at the disk check: nothing was
    # written, and its netboot is back on the hard disk.
    assert lab.store.get(OVH).state == "rescue"
    assert "install" in [step.step for step in lab.store.steps(OVH)
                         if step.status == "failed"], lab.store.steps(OVH)

    lab.fleet_path.write_text(lab.fleet_path.read_text().replace(WRONG_SERIAL, GOOD_SERIAL))
    second = json.loads(lab.cli("--json", "provision", OVH, *DEPLOY).stdout)
    assert second["state"] == "deployed"

    # It answers on its pinned host key, with the network its provider gives.
    with lab.shell(OVH) as shell:
        _, interfaces, _ = shell.run("cat /etc/network/interfaces")
        assert "inet static" in interfaces and "10.0.2.15/24" in interfaces
        _, name, _ = shell.run("hostname")
        assert name.strip() == OVH
        assert "is active" in shell.run("cryptsetup status root")[1]
