"""A node whose disk turns critical is drained from real PowerDNS servers through `clonefleet
serve`: the smartwatch agent runs as a local process against replayed smartctl outputs, the
control plane runs as a `clonefleet serve` process on loopback, alerts go to a local webhook.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pdns_fixture import CLIENTS, DnsLab, free_port
from webhook_fixture import Webhook

from clonefleet.dnsmap import drain_node, publish
from clonefleet.dnsmap.powerdns import ask
from clonefleet.serve import issue_token

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "smartwatch"))

from smartwatch_replay import ReplayedMachine  # noqa: E402

pytestmark = pytest.mark.integration

EDGE = "edge.dnslab.clonefleet.test."
AGENT_TIMEOUT = 120
SERVE_START_TIMEOUT = 15.0


class Serve:
    """`clonefleet serve` as its own process; `start()` again after `stop()` is allowed."""

    def __init__(self, lab: DnsLab, port: int, log: Path) -> None:
        self.lab, self.port, self.log = lab, port, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "CLONEFLEET_STATE_DIR": str(self.lab.state_root),
               "PYTHONPATH": str(ROOT)}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from clonefleet.cli import main; main()",
                 "--fleet", str(self.lab.fleet.path), "serve",
                 "--listen", f"127.0.0.1:{self.port}", "--drain-timeout", "20"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=ROOT)
        deadline = time.monotonic() + SERVE_START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/health",
                                            timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"clonefleet serve did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.stop()


@pytest.fixture
def serve(dns_lab: DnsLab, tmp_path: Path) -> Iterator[Serve]:
    control_plane = Serve(dns_lab, free_port(), tmp_path / "serve.log")
    yield control_plane
    control_plane.stop()


def agent_config(tmp_path: Path, machine: ReplayedMachine, lab: DnsLab, node: str,
                 serve_port: int, webhook: Webhook) -> Path:
    token_file = tmp_path / "drain_token"
    token_file.write_text(issue_token(lab.fleet, lab.store, node) + "\n")
    config = tmp_path / "smartwatch.toml"
    config.write_text(f"""
node = "{node}"
state_db = "{tmp_path / 'smartwatch.sqlite'}"
smartctl = "{machine.smartctl}"
mdstat = "{tmp_path / 'no-mdstat'}"
metrics_file = "{tmp_path / 'metrics' / 'smartwatch.prom'}"

[alerts]
urls = ["{webhook.url}"]

[drain]
url = "http://127.0.0.1:{serve_port}"
token_file = "{token_file}"
attempts = 2
backoff_seconds = 0.05
max_backoff_seconds = 0.1
timeout_seconds = 30
confirm_delay_seconds = 0

[selftest]
enabled = false
""")
    return config


def agent(config: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smartwatch", "--config", str(config), *arguments],
        capture_output=True, text=True, timeout=AGENT_TIMEOUT, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)


def served_addresses(lab: DnsLab) -> set[str]:
    addresses: set[str] = set()
    for endpoint in lab.endpoints.values():
        addresses |= set(ask(endpoint, EDGE, "A", client=CLIENTS["fsn"][0] + "/24").addresses)
    return addresses


def test_node_whose_disk_turns_critical_is_drained_from_powerdns_and_alerted(
        dns_lab: DnsLab, serve: Serve, webhook: Webhook, tmp_path: Path) -> None:
    publish(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, actor="test")
    fsn1 = dns_lab.fleet.nodes["fsn-1"].ipv4
    assert fsn1 in served_addresses(dns_lab)
    machine = ReplayedMachine(tmp_path / "machine").use("healthy_nvme")
    config = agent_config(tmp_path, machine, dns_lab, "fsn-1", serve.port, webhook)
    serve.start()

    healthy = agent(config, "check", "--json")
    assert healthy.returncode == 0, healthy.stderr
    assert dns_lab.store.get("fsn-1").state == "active"

    machine.use("nvme_critical")
    critical = agent(config, "check", "--json")
    assert critical.returncode == 2, critical.stderr
    result = json.loads(critical.stdout)
    assert [event["outcome"] for event in result["drain"]] == ["acknowledged"]

    record = dns_lab.store.get("fsn-1")
    assert record.state in ("draining", "drained")
    assert record.actor == "smartwatch@fsn-1"
    assert "NVM subsystem reliability has been degraded" in record.reason
    assert fsn1 not in served_addresses(dns_lab)
    assert any("[CRITICAL] fsn-1" in title and "bit 2" in title for title in webhook.titles())
    assert (tmp_path / "metrics" / "smartwatch.prom").read_text().count(
        "smartwatch_disk_severity{") == 1

    # The next hourly check neither drains again nor alerts again.
    alerts_before = len(webhook.received)
    again = agent(config, "check", "--json")
    assert again.returncode == 2
    assert json.loads(again.stdout)["drain"] == []
    assert len(webhook.received) == alerts_before


def test_drain_requested_while_control_plane_is_down_happens_once_it_is_back(
        dns_lab: DnsLab, serve: Serve, webhook: Webhook, tmp_path: Path) -> None:
    publish(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, actor="test")
    machine = ReplayedMachine(tmp_path / "machine").use("failed_overall")
    config = agent_config(tmp_path, machine, dns_lab, "fsn-1", serve.port, webhook)

    down = agent(config, "check", "--json")  # nothing listens on the serve port
    assert down.returncode == 2, down.stderr
    report = json.loads(down.stdout)
    assert [event["outcome"] for event in report["drain"]] == []
    # Not silent: the pending request is in the report and on stderr (the journal).
    [pending] = report["drain_pending"]
    assert (pending["status"], pending["attempts"]) == ("pending", 2)
    assert "ST3250318AS serial 9VY1LMLV" in pending["reason"]
    assert f"drain request {pending['request_id']} not delivered" in down.stderr
    assert dns_lab.store.get("fsn-1").state == "active"
    still_down = agent(config, "flush")
    assert still_down.returncode == 1, still_down.stderr
    assert "1 drain request(s) not delivered" in still_down.stderr
    spooled = json.loads(agent(config, "status", "--json").stdout)["drain_requests"]
    assert [entry["status"] for entry in spooled] == ["pending"]
    assert spooled[0]["attempts"] == 4  # two by the check, two by the flush
    assert any("ST3250318AS serial 9VY1LMLV" in str(message.get("message"))
               for message in webhook.received)

    serve.start()
    flushed = agent(config, "flush")
    assert flushed.returncode == 0, flushed.stderr
    assert "acknowledged" in flushed.stdout
    assert dns_lab.store.get("fsn-1").state in ("draining", "drained")
    assert dns_lab.fleet.nodes["fsn-1"].ipv4 not in served_addresses(dns_lab)
    spooled = json.loads(agent(config, "status", "--json").stdout)["drain_requests"]
    assert [entry["status"] for entry in spooled] == ["acknowledged"]


def test_drain_that_would_empty_a_region_is_refused_and_pages_loudly(
        dns_lab: DnsLab, serve: Serve, webhook: Webhook, tmp_path: Path) -> None:
    publish(dns_lab.fleet, dns_lab.store, dns_lab.endpoints, actor="test")
    drain_node(dns_lab.fleet, dns_lab.store, "fsn-2", reason="maintenance", actor="test",
               endpoints=dns_lab.endpoints, timeout=20)
    machine = ReplayedMachine(tmp_path / "machine").use("failed_selftest")
    config = agent_config(tmp_path, machine, dns_lab, "fsn-1", serve.port, webhook)
    serve.start()

    refused = agent(config, "check", "--json")
    assert refused.returncode == 2, refused.stderr
    assert [event["outcome"] for event in json.loads(refused.stdout)["drain"]] == ["refused"]
    assert dns_lab.store.get("fsn-1").state == "active"
    assert dns_lab.fleet.nodes["fsn-1"].ipv4 in served_addresses(dns_lab)
    loud = [message for message in webhook.received
            if "DRAIN REFUSED" in str(message.get("title"))]
    assert len(loud) == 1
    assert "min_active" in str(loud[0].get("message"))
    assert loud[0].get("type") == "failure"

    # Refused again on the next check: the operators were already paged, no second page.
    agent(config, "check", "--json")
    assert len([message for message in webhook.received
                if "DRAIN REFUSED" in str(message.get("title"))]) == 1
