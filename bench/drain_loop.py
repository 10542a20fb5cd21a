"""The mission's loop on real nodes, timed: a node's smartwatch reads a failing disk, alerts,
and drains the node through `clonefleet serve` from every node's own PowerDNS.

    sudo .venv/bin/python -u bench/drain_loop.py [--repeat 3] [--keep DIR | --reuse DIR]

Provisions the lab fleet (fsn-1, fsn-2, ash-1: full clones on the lab's LAN) in a throw-away
fleet state (`--keep DIR` keeps it, `--reuse DIR` runs on one kept before and skips the
provisioning), puts every node in the DNS map and starts `clonefleet serve` where the agents
send drain requests. Then, --repeat times: fsn-2's agent (as deployed, with `smartctl`
replayed from a failing NVMe recording and a fresh agent state) runs one check over an open
SSH session, while a thread asks every node's PowerDNS for the routed name (ECS: fsn-2's own
neighbourhood) every 50 ms. Per round it prints the time from starting the check to the
first and to the last server no longer answering with fsn-2 — measured from these queries,
never from a command's own report — and when the alert arrived; then the medians. fsn-2 is
undrained between rounds. Every wait is bounded; the VMs are deleted at the end unless kept.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from node_replay import CHECK, install_replay  # noqa: E402

from clonefleet.dnsmap import Endpoints  # noqa: E402
from clonefleet.dnsmap.errors import DnsError  # noqa: E402
from clonefleet.dnsmap.powerdns import ask  # noqa: E402
from clonefleet.inventory import Fleet, load_fleet  # noqa: E402
from clonefleet.lab.qemu import free_port  # noqa: E402
from clonefleet.providers.base import SshAccess  # noqa: E402
from clonefleet.ssh import RemoteShell  # noqa: E402
from clonefleet.state import open_store  # noqa: E402

NODES = ("fsn-1", "fsn-2", "ash-1")
FAILING = "fsn-2"
EDGE = "edge.lab.clonefleet.test."
ROUND_TIMEOUT = 300.0
POLL = 0.05


class Alerts(BaseHTTPRequestHandler):
    """The operators' channel: records when each alert arrived."""

    arrivals: ClassVar[list[tuple[float, str]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        title = str(json.loads(body or b"{}").get("title", ""))
        Alerts.arrivals.append((time.monotonic(), title))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def cli(fleet_path: Path, *arguments: str, timeout: float = 7200) -> str:
    result = subprocess.run([sys.executable, "-m", "clonefleet", "--fleet", str(fleet_path),
                             *arguments], capture_output=True, text=True, timeout=timeout,
                            cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"bench: clonefleet {' '.join(arguments)} exited "
                         f"{result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def write_fleet(folder: Path, serve_port: int, alert_port: int) -> Path:
    text = (ROOT / "inventory" / "lab.toml").read_text().replace("[fleet]\n", (
        f'[fleet]\ncontrol_url = "http://10.0.2.2:{serve_port}"\n'
        f'alert_urls = ["json://10.0.2.2:{alert_port}/"]\n'), 1)
    path = folder / "lab.toml"
    path.write_text(text)
    return path


def ports_of(path: Path) -> tuple[int, int]:
    """(serve port, alert port) of a fleet file this script wrote."""
    fleet = load_fleet(path)
    return (int(fleet.control_url.rsplit(":", 1)[1]),
            int(fleet.alert_urls[0].rsplit(":", 1)[1].strip("/")))


def shell(fleet: Fleet, state_dir: Path, node: str) -> RemoteShell:
    store = open_store(state_dir, fleet.state)
    access = store.get_fact(node, "ssh")
    return RemoteShell(SshAccess(access["host"], access["port"]), state_dir / "id_ed25519",
                       pinned=store.get_fact(node, "ssh_host_key"), what=node)


def one_round(fleet: Fleet, state_dir: Path) -> dict[str, Any]:
    store = open_store(state_dir, fleet.state)
    endpoints = Endpoints.from_store(fleet, store)
    address = fleet.node(FAILING).ipv4
    client = f"{address}/32"
    gone: dict[str, float] = {}
    stop = threading.Event()

    def poll(node: str) -> None:
        while not stop.is_set():
            try:
                served = ask(endpoints[node], EDGE, "A", client=client, timeout=1).addresses
            except DnsError:
                served = frozenset([address])  # not answering is not "drained"
            if address not in served:
                gone.setdefault(node, time.monotonic())
                return
            time.sleep(POLL)

    with shell(fleet, state_dir, FAILING) as remote:
        install_replay(remote, "nvme_critical")
        for node, endpoint in endpoints.items():
            if address not in ask(endpoint, EDGE, "A", client=client).addresses:
                raise SystemExit(f"bench: {node}'s server does not answer with {FAILING} "
                                 "before the round")
        alerts_before = len(Alerts.arrivals)
        threads = [threading.Thread(target=poll, args=(node,), daemon=True)
                   for node in endpoints]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        code, out, err = remote.run(CHECK, check=False, timeout=ROUND_TIMEOUT)
        checked = time.monotonic()
    for thread in threads:
        thread.join(timeout=max(1.0, started + ROUND_TIMEOUT - time.monotonic()))
    stop.set()
    if code != 2 or len(gone) != len(endpoints):
        raise SystemExit(f"bench: the check exited {code} (2 expected); servers without "
                         f"{FAILING}: {sorted(gone)} of {sorted(endpoints)}\n{out}\n{err}")
    deadline = time.monotonic() + 60
    while len(Alerts.arrivals) == alerts_before and time.monotonic() < deadline:
        time.sleep(0.1)
    alert = next((at for at, title in Alerts.arrivals[alerts_before:]
                  if f"[CRITICAL] {FAILING}" in title), None)
    return {"check": checked - started, "first": min(gone.values()) - started,
            "last": max(gone.values()) - started,
            "alert": None if alert is None else alert - started,
            "outcome": [event["outcome"] for event in json.loads(out)["drain"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", help="keep the fleet state (and VMs) in this folder")
    parser.add_argument("--reuse", help="a folder --keep left: skip provisioning")
    arguments = parser.parse_args()
    if arguments.repeat < 1 or arguments.repeat > 20:
        raise SystemExit("bench: --repeat must be 1 to 20")

    folder = Path(arguments.reuse or arguments.keep or tempfile.mkdtemp(prefix="cf-loop-"))
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["CLONEFLEET_STATE_DIR"] = str(folder)
    os.environ["CLONEFLEET_AGE_KEY"] = str(folder / "age.key")
    if arguments.reuse:
        fleet_path = folder / "lab.toml"
        serve_port, alert_port = ports_of(fleet_path)
    else:
        serve_port, alert_port = free_port(), free_port()
        fleet_path = write_fleet(folder, serve_port, alert_port)
    fleet = load_fleet(fleet_path)
    state_dir = folder / fleet.name
    alerts = ThreadingHTTPServer(("127.0.0.1", alert_port), Alerts)
    threading.Thread(target=alerts.serve_forever, daemon=True).start()
    serve: subprocess.Popen[str] | None = None
    try:
        if not arguments.reuse:
            started = time.monotonic()
            cli(fleet_path, "provision", *NODES)
            print(f"provisioned {', '.join(NODES)} in {time.monotonic() - started:.0f} s "
                  "(not counted)")
            for node in NODES:
                cli(fleet_path, "undrain", node)
        serve = subprocess.Popen(
            [sys.executable, "-m", "clonefleet", "--fleet", str(fleet_path), "serve",
             "--listen", f"127.0.0.1:{serve_port}"], cwd=ROOT, text=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)
        rounds = []
        for index in range(arguments.repeat):
            result = one_round(fleet, state_dir)
            rounds.append(result)
            alert = "none" if result["alert"] is None else f"{result['alert']:.1f} s"
            print(f"round {index + 1}: check {result['check']:.1f} s, first server without "
                  f"{FAILING} {result['first']:.1f} s, last {result['last']:.1f} s, alert "
                  f"{alert} ({', '.join(result['outcome'])})")
            cli(fleet_path, "dns", "health", FAILING, "--ok", "--source", "bench")
            cli(fleet_path, "undrain", FAILING, "--reason", "bench round over")
        print(f"median of {len(rounds)}: check start → last server without {FAILING} "
              f"{statistics.median(r['last'] for r in rounds):.1f} s "
              f"(first {statistics.median(r['first'] for r in rounds):.1f} s, "
              f"servers: {len(NODES)})")
    finally:
        if serve is not None:
            serve.terminate()
            serve.wait(timeout=20)
        alerts.shutdown()
        if not (arguments.keep or arguments.reuse):
            from clonefleet.providers.lab import LabProvider

            provider = LabProvider(state_dir, log=lambda message: None)
            for server in provider.list():
                provider.delete(server.node)


if __name__ == "__main__":
    main()
