"""How long `clonefleet drain` takes to reach every DNS server, for 3, 10 and 30 PowerDNS servers.

Starts N real PowerDNS servers on loopback (one per node of a generated fleet, endpoints stored
as `dns_endpoint` facts as a deploy would), publishes, then for each drain:

- starts the `clonefleet drain NODE` *process* (start-up and imports included), and
- polls every server with its own DNS queries (ECS 0.0.0.0/0: the full answer, which lists
  every candidate) until none answers with the drained node's address.

The figure is the time from starting the process to the last server no longer answering, taken
from these queries, never from the command's own report. Record TTLs at resolvers are not
counted. The node is undrained (through the Python API) between drains. Also times
`clonefleet --help` and `clonefleet drain --help` (start-up alone). All servers are stopped at
the end; every loop is bounded in count and time.

    .venv/bin/python bench/drain.py [--sizes 3,10,30] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pdns_fixture import start_powerdns_servers, stop_all

from clonefleet.dnsmap import ENDPOINT_FACT, Endpoints, build_geoip_database, publish, undrain_node
from clonefleet.dnsmap.powerdns import ask, ecs_option
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.state import open_store

REGIONS = {"fsn": (50.47, 12.37), "ash": (39.04, -77.49), "sin": (1.35, 103.82)}
CLONEFLEET = Path(sys.executable).with_name("clonefleet")
POLL_LIMIT = 30.0  # seconds: a drain not seen everywhere by then is a failure
# Sweeps of the poller: finer costs the servers and this machine (30 servers at 10 ms is 3000
# LUA queries a second) CPU the drain being timed needs; the figures are this coarse.
SWEEP_SECONDS = 0.025


def fleet_text(size: int) -> str:
    lines = ['[fleet]', f'name = "bench{size}"', f'domain = "bench{size}.clonefleet.test"',
             "min_active_total = 1", "dns_grace_seconds = 1", "",
             "[[routed]]", 'name = "edge"', "ttl = 30", ""]
    for region, (latitude, longitude) in REGIONS.items():
        lines += [f"[regions.{region}]", 'provider = "lab"', f"latitude = {latitude}",
                  f"longitude = {longitude}", "min_active = 0", ""]
    for index in range(size):
        region = list(REGIONS)[index % len(REGIONS)]
        lines += [f"[nodes.{region}-{index}]", f'region = "{region}"',
                  f'disks = ["BENCH-{size}-{index}"]', f'ipv4 = "192.0.2.{10 + index}"',
                  f'ipv6 = "2001:db8::{10 + index:x}"', ""]
    return "\n".join(lines)


def run_seconds(arguments: list[str], environment: dict[str, str], repeat: int = 5) -> float:
    """Median wall time of a command (start-up measurement)."""
    timings = []
    for _ in range(repeat):
        started = time.monotonic()
        subprocess.run(arguments, env=environment, stdout=subprocess.DEVNULL, check=True,
                       timeout=30)
        timings.append(time.monotonic() - started)
    return statistics.median(timings)


def until_nobody_serves(endpoints: Endpoints, name: str, address: str,
                        started: float) -> dict[str, float]:
    """Poll every server until none answers `address`; server → seconds since `started`.

    Each sweep sends one query to every server still serving (one UDP socket each, the query
    built once), then reads what comes back until the next sweep. A busy-looping poller
    took a whole core here and starved the drain it was timing.
    """
    import dns.message
    import dns.rdatatype

    wire = dns.message.make_query(name, "A", use_edns=0,
                                  options=[ecs_option("0.0.0.0/0")]).to_wire()
    sockets = {}
    for server, endpoint in endpoints.items():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect((endpoint.dns_address, endpoint.dns_port))
        sock.setblocking(False)
        sockets[server] = sock
    gone: dict[str, float] = {}
    try:
        with selectors.DefaultSelector() as selector:
            for server, sock in sockets.items():
                selector.register(sock, selectors.EVENT_READ, server)
            while len(gone) < len(sockets) and time.monotonic() - started < POLL_LIMIT:
                for server, sock in sockets.items():
                    if server not in gone:
                        sock.send(wire)
                sweep_end = time.monotonic() + SWEEP_SECONDS
                while (remaining := sweep_end - time.monotonic()) > 0:
                    for key, _ in selector.select(remaining):
                        server = key.data
                        reply = dns.message.from_wire(key.fileobj.recv(4096))  # type: ignore[union-attr]
                        served = {record.to_text() for rrset in reply.answer
                                  if rrset.rdtype == dns.rdatatype.A for record in rrset}
                        if server not in gone and served and address not in served:
                            gone[server] = time.monotonic() - started
    finally:
        for sock in sockets.values():
            sock.close()
    if len(gone) < len(sockets):
        raise SystemExit(f"still serving {address} after {POLL_LIMIT:.0f} s: "
                         f"{sorted(set(sockets) - set(gone))}")
    return gone


def measure(size: int, repeat: int, directory: Path) -> list[float]:
    path = directory / f"bench{size}.toml"
    path.write_text(fleet_text(size))
    fleet: Fleet = load_fleet(path)
    state_root = directory / f"state{size}"
    store = open_store(state_root / fleet.name, fleet.state)
    for name in fleet.nodes:
        store.set_state(name, "active", actor="bench", reason="bench setup")
    geoip = build_geoip_database(fleet, directory / f"nodes{size}.mmdb")
    names = sorted(fleet.nodes)
    started = time.monotonic()
    servers = start_powerdns_servers(size, directory / f"pdns{size}", [geoip], names)
    startup = time.monotonic() - started
    environment = {**os.environ, "CLONEFLEET_STATE_DIR": str(state_root),
                   "CLONEFLEET_ACTOR": "bench"}
    try:
        endpoints = Endpoints({server.name: server.endpoint for server in servers})
        for server in servers:
            store.set_fact(server.name, ENDPOINT_FACT, server.endpoint.as_fact())
        first = publish(fleet, store, endpoints, actor="bench")
        if not first.ok:
            raise SystemExit(f"initial publish failed: {first.unreachable}")
        target = names[0]
        address = fleet.nodes[target].ipv4
        edge = f"edge.{fleet.domain}."
        # Start-up plus reading this fleet and its state, without any DNS work.
        dry = run_seconds([str(CLONEFLEET), "--fleet", str(path), "drain", target, "--reason",
                           "bench", "--dry-run"], environment, repeat=3)
        timings: list[float] = []
        commands: list[float] = []
        reported: list[float] = []
        for _ in range(repeat):
            for endpoint in endpoints.values():
                if address not in ask(endpoint, edge, "A", client="0.0.0.0/0").addresses:
                    raise SystemExit(f"{endpoint.node} does not serve {address} before the drain")
            began = time.monotonic()
            process = subprocess.Popen(
                [str(CLONEFLEET), "--fleet", str(path), "--json", "drain", target, "--reason",
                 "bench"],
                env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            gone = until_nobody_serves(endpoints, edge, address, began)
            stdout, stderr = process.communicate(timeout=60)
            commands.append(time.monotonic() - began)
            if process.returncode != 0:
                raise SystemExit(f"clonefleet drain exited {process.returncode}: {stderr}")
            timings.append(max(gone.values()))
            # For the split only: the command's own figure starts after its start-up.
            reported.append(json.loads(stdout)["seconds"])
            undrain_node(fleet, store, target, actor="bench", endpoints=endpoints, timeout=60)
        print(f"  {size:>2} servers (started in {startup:.1f} s): `clonefleet drain` start → "
              f"last server stopped answering: {', '.join(f'{t * 1000:.0f}' for t in timings)}"
              f" ms (median {statistics.median(timings) * 1000:.0f} ms); the command "
              f"exited after a median {statistics.median(commands) * 1000:.0f} ms; of that, "
              f"drain_node itself reported {statistics.median(reported) * 1000:.0f} ms to its "
              f"last confirmation; `drain --dry-run` took {dry * 1000:.0f} ms", flush=True)
        return timings
    finally:
        stop_all(servers)
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="3,10,30")
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    sizes = [int(size) for size in arguments.sizes.split(",")]
    environment = dict(os.environ)
    print(f"start-up (median of 5): `clonefleet --help` "
          f"{run_seconds([str(CLONEFLEET), '--help'], environment) * 1000:.0f} ms, "
          f"`clonefleet drain --help` "
          f"{run_seconds([str(CLONEFLEET), 'drain', '--help'], environment) * 1000:.0f} ms, "
          f"`python -c pass` {run_seconds([sys.executable, '-c', 'pass'], environment) * 1000:.0f}"
          " ms", flush=True)
    print(f"drain propagation, {arguments.repeat} drains per size (TTL not counted):", flush=True)
    with tempfile.TemporaryDirectory(prefix="clonefleet-bench-") as directory:
        for size in sizes:
            measure(size, arguments.repeat, Path(directory))


if __name__ == "__main__":
    main()
