"""The dns deploy's own files run a real PowerDNS: deployed into a chroot of the node image
with loopback addresses, `pdns_server` started inside it answers the DNS map that
`clonefleet dns publish` pushed through the endpoint the after-deploy hook recorded."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from chroot_fixture import ChrootFleet, chroot_nodes, control_plane_host_data, run_deploy

from clonefleet.dnsmap import Endpoints, publish, verify
from clonefleet.dnsmap.endpoints import ENDPOINT_FACT
from clonefleet.dnsmap.powerdns import ask
from clonefleet.inventory import load_fleet
from clonefleet.lab.qemu import free_port
from clonefleet.secrets import open_secrets
from clonefleet.services import DeployOutcome, ServiceContext, after_deploy
from clonefleet.state import open_store

pytestmark = pytest.mark.integration
START_TIMEOUT = 30.0


@pytest.fixture
def powerdns_node(node_image: Path, chroot_fleet: ChrootFleet) -> Iterator[dict[str, int]]:
    """fsn-1 with only the dns deploy, on loopback ports, its pdns_server running."""
    ports = {"dns": free_port(), "api": free_port()}
    data = control_plane_host_data(chroot_fleet.fleet_path, chroot_fleet.state_dir, ["fsn-1"])
    loopback = {"dns_local_address": "127.0.0.1", "dns_port": ports["dns"],
                "dns_api_address": "127.0.0.1", "dns_api_port": ports["api"],
                "dns_small": True}
    with chroot_nodes(node_image, chroot_fleet.workdir / "dns", ["fsn-1"]) as nodes:
        node = nodes["fsn-1"]
        node.data = {**data["fsn-1"], **loopback}
        result = run_deploy([node], "deploys.dns:dns")["fsn-1"]
        assert not result.failed, result.errors
        log = (node.root.parent / "pdns.log").open("wb")
        # As the packaged unit runs it (user pdns, Debian's pdns.conf including ours), minus
        # systemd: no guardian, no daemon, a control socket where pdns may write.
        process = subprocess.Popen(
            ["chroot", "--userspec=pdns:pdns", str(node.root), "/usr/sbin/pdns_server",
             "--guardian=no", "--daemon=no", "--disable-syslog", "--write-pid=no",
             "--socket-dir=/var/lib/powerdns"], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_api(ports["api"], data["fsn-1"]["dns_api_key"], process,
                         node.root.parent / "pdns.log")
            store = open_store(chroot_fleet.state_dir)
            store.set_fact("fsn-1", "forwarded_ports", {
                f"tcp/{data['fsn-1']['dns_api_port']}": ["127.0.0.1", ports["api"]],
                "udp/53": ["127.0.0.1", ports["dns"]]})
            fleet = load_fleet(chroot_fleet.fleet_path)
            after_deploy(ServiceContext(fleet, fleet.node("fsn-1"), store,
                                        open_secrets(chroot_fleet.state_dir)),
                         DeployOutcome(result.failed, frozenset(result.succeeded)))
            yield ports
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            log.close()


def wait_for_api(port: int, key: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            response = requests.get(f"http://127.0.0.1:{port}/api/v1/servers/localhost",
                                    headers={"X-API-Key": key}, timeout=1)
            if response.status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"pdns_server in the chroot did not come up: {log.read_text()[-2000:]}")


def test_deployed_powerdns_answers_the_published_map_through_the_recorded_endpoint(
        powerdns_node: dict[str, int], chroot_fleet: ChrootFleet) -> None:
    fleet = load_fleet(chroot_fleet.fleet_path)
    store = open_store(chroot_fleet.state_dir)
    assert "api_key" not in store.get_fact("fsn-1", ENDPOINT_FACT)  # named, not stored
    for name in fleet.nodes:
        store.set_state(name, "active", actor="test-setup", reason="deployed in the test")

    result = publish(fleet, store, actor="test")  # endpoints from the store, as the CLI does

    assert result.pushed == ["fsn-1"] and result.ok
    endpoint = Endpoints.from_store(fleet, store)["fsn-1"]
    assert endpoint.dns_port == powerdns_node["dns"]
    # The GeoIP database the deploy shipped places each node's address in its region.
    name = f"edge.{fleet.domain}."
    assert ask(endpoint, name, "A", client="192.0.2.11").addresses == {"192.0.2.11"}
    assert ask(endpoint, name, "A", client="198.51.100.21").addresses == {"198.51.100.21"}
    report = verify(fleet, store)  # every region's answer, as `clonefleet dns verify`
    assert report.ok and report.checked == ["fsn-1"], report
