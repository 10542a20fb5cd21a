"""`clonefleet dns …`, `drain`, `undrain` end to end against real PowerDNS servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from pdns_fixture import CLIENT_UNKNOWN, DnsLab

from clonefleet.cli import _register, cli
from clonefleet.dnsmap.powerdns import ask, patch_rrsets

pytestmark = pytest.mark.integration

EDGE = "edge.dnslab.clonefleet.test."
_register()


def run(lab: DnsLab, *arguments: str) -> Result:
    environment = {"CLONEFLEET_STATE_DIR": str(lab.state_root), "CLONEFLEET_ACTOR": "test-cli"}
    return CliRunner().invoke(cli, ["--fleet", str(lab.fleet.path), *arguments],
                              env=environment, catch_exceptions=False)


def test_publish_verify_drain_show_undrain_through_the_cli(dns_lab: DnsLab) -> None:
    published = run(dns_lab, "--json", "dns", "publish")
    assert published.exit_code == 0, published.output
    assert sorted(json.loads(published.output)["pushed"]) == sorted(dns_lab.fleet.nodes)
    assert run(dns_lab, "dns", "verify").exit_code == 0

    drained = run(dns_lab, "--json", "drain", "ash-2", "--reason", "RAM test")
    assert drained.exit_code == 0, drained.output
    assert json.loads(drained.output)["state"] == "draining"
    shown = json.loads(run(dns_lab, "--json", "dns", "show").output)
    node = next(item for item in shown["nodes"] if item["name"] == "ash-2")
    assert (node["state"], node["reason"], node["actor"]) == ("draining", "RAM test", "test-cli")
    assert all("ash-2" not in entry["nodes"] for entry in shown["routed"])
    table = run(dns_lab, "dns", "show").output
    assert "ash-2" in table and "RAM test" in table

    verified = run(dns_lab, "--json", "dns", "verify")
    assert verified.exit_code == 0 and json.loads(verified.output)["ok"] is True

    undrained = run(dns_lab, "undrain", "ash-2")
    assert undrained.exit_code == 0, undrained.output
    got = ask(dns_lab.servers["fsn-1"].endpoint, EDGE, "A", client=CLIENT_UNKNOWN + "/24")
    assert dns_lab.fleet.nodes["ash-2"].ipv4 in got.addresses


def test_verify_exits_23_when_a_server_serves_a_drained_address(dns_lab: DnsLab) -> None:
    assert run(dns_lab, "drain", "fsn-1", "--reason", "disk").exit_code == 0
    patch_rrsets(dns_lab.servers["sin-1"].endpoint, "dnslab.clonefleet.test.", [{
        "name": EDGE, "type": "A", "ttl": 30, "changetype": "REPLACE",
        "records": [{"content": dns_lab.fleet.nodes["fsn-1"].ipv4, "disabled": False}],
    }], timeout=5)
    result = CliRunner().invoke(
        cli, ["--fleet", str(dns_lab.fleet.path), "dns", "verify"],
        env={"CLONEFLEET_STATE_DIR": str(dns_lab.state_root)})
    assert result.exit_code == 23
    assert "sin-1" in result.stdout and "192.0.2.11" in result.stdout
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    # Publishing repairs it.
    assert run(dns_lab, "dns", "publish").exit_code == 0
    assert run(dns_lab, "dns", "verify").exit_code == 0


def test_publish_exits_22_and_names_a_server_that_is_down(dns_lab: DnsLab) -> None:
    dns_lab.servers["ash-1"].stop()
    result = run(dns_lab, "dns", "publish")
    assert result.exit_code == 22
    assert "UNREACHABLE ash-1" in result.output


def test_dry_run_drain_changes_nothing_and_publishes_nothing(dns_lab: DnsLab) -> None:
    result = run(dns_lab, "drain", "fsn-2", "--reason", "check", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would drain fsn-2" in result.output
    record = dns_lab.store.get("fsn-2")
    assert record is not None and record.state == "active"
    assert dns_lab.store.last_dns_serial() is None


DRAIN_SCRIPT = """
import sys, time
from pathlib import Path
from clonefleet.dnsmap import drain_node
from clonefleet.inventory import load_fleet
from clonefleet.state import open_store
fleet_path, state_dir, node, go = sys.argv[1:5]
while not Path(go).exists():
    time.sleep(0.005)
result = drain_node(load_fleet(fleet_path), open_store(state_dir), node, reason="race " + node,
                    actor="process-" + node, timeout=30)
print(result.state, ",".join(result.confirmed))
"""


def test_two_processes_draining_at_once_both_land_in_state_and_on_every_server(
        dns_lab: DnsLab, tmp_path: Path) -> None:
    go = tmp_path / "go"
    processes = [
        subprocess.Popen([sys.executable, "-c", DRAIN_SCRIPT, str(dns_lab.fleet.path),
                          str(dns_lab.state_root / dns_lab.fleet.name), node, str(go)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path.cwd())})
        for node in ("fsn-1", "ash-1")
    ]
    time.sleep(1.0)  # both processes imported and are polling for the start signal
    go.write_text("go")
    outputs = [process.communicate(timeout=60) for process in processes]
    for process, (stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
        assert stdout.startswith("draining ")
    for node in ("fsn-1", "ash-1"):
        record = dns_lab.store.get(node)
        assert record is not None and record.state == "draining"
        assert record.reason == f"race {node}"
    drains = [t.node for t in dns_lab.store.history() if t.to_state == "draining"]
    assert sorted(drains) == ["ash-1", "fsn-1"]
    gone = {dns_lab.fleet.nodes[node].ipv4 for node in ("fsn-1", "ash-1")}
    for endpoint in dns_lab.endpoints.values():
        got = ask(endpoint, EDGE, "A", client=CLIENT_UNKNOWN + "/24").addresses
        assert got and not got & gone, endpoint.node
