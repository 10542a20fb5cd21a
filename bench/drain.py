"""How long a drain takes to reach every DNS server, for 3, 10 and 30 PowerDNS servers.

Starts N real PowerDNS servers on loopback (one per node of a generated fleet), publishes, then
times `drain_node` from the call until the last server no longer answers with the drained
node's address (each server checked with real DNS queries; record TTLs at resolvers are not
counted). Each size is drained and undrained a few times; all servers are stopped at the end.

    .venv/bin/python bench/drain.py [--sizes 3,10,30] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pdns_fixture import start_powerdns_servers, stop_all

from clonefleet.dnsmap import Endpoints, build_geoip_database, drain_node, publish, undrain_node
from clonefleet.dnsmap.powerdns import ask
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.state import SqliteStateStore

REGIONS = {"fsn": (50.47, 12.37), "ash": (39.04, -77.49), "sin": (1.35, 103.82)}


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


def measure(size: int, repeat: int, directory: Path) -> list[float]:
    path = directory / f"bench{size}.toml"
    path.write_text(fleet_text(size))
    fleet: Fleet = load_fleet(path)
    store = SqliteStateStore(directory / f"state{size}.sqlite")
    for name in fleet.nodes:
        store.transition(name, "active", actor="bench", reason="bench setup")
    geoip = build_geoip_database(fleet, directory / f"nodes{size}.mmdb")
    names = sorted(fleet.nodes)
    started = time.monotonic()
    servers = start_powerdns_servers(size, directory / f"pdns{size}", [geoip], names)
    startup = time.monotonic() - started
    try:
        endpoints = Endpoints({server.name: server.endpoint for server in servers})
        first = publish(fleet, store, endpoints, actor="bench")
        if not first.ok:
            raise SystemExit(f"initial publish failed: {first.unreachable}")
        target = names[0]
        address = fleet.nodes[target].ipv4
        timings = []
        for _ in range(repeat):
            result = drain_node(fleet, store, target, reason="bench", actor="bench",
                                endpoints=endpoints, timeout=60)
            if result.unreachable or len(result.confirmed) != size:
                raise SystemExit(f"drain not confirmed everywhere: {result}")
            # An independent check after the call returned: nobody serves the address.
            for endpoint in endpoints.values():
                answer = ask(endpoint, f"edge.{fleet.domain}.", "A", client="0.0.0.0/0")
                if address in answer.addresses:
                    raise SystemExit(f"{endpoint.node} still serves {address}")
            timings.append(result.seconds)
            undrain_node(fleet, store, target, actor="bench", endpoints=endpoints, timeout=60)
        print(f"  {size:>2} servers: started in {startup:.1f} s; drain → last server "
              f"stopped answering: {', '.join(f'{t * 1000:.0f}' for t in timings)} ms "
              f"(median {statistics.median(timings) * 1000:.0f} ms)", flush=True)
        return timings
    finally:
        stop_all(servers)
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="3,10,30")
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    sizes = [int(size) for size in arguments.sizes.split(",")]
    print(f"drain propagation, {arguments.repeat} drains per size (TTL not counted):")
    with tempfile.TemporaryDirectory(prefix="clonefleet-bench-") as directory:
        for size in sizes:
            measure(size, arguments.repeat, Path(directory))


if __name__ == "__main__":
    main()
