"""Three nodes' WireGuard configs, rendered as the deploy renders them, join a real mesh.

Each node is a network namespace of the test's own, joined to an "underlay" namespace (the
internet) by a veth pair and a bridge. Every node's mesh endpoint is recorded as the
`mesh_endpoint` fact, as the lab provider records it for VMs. `wg-quick up` brings each config
up inside its namespace; pings cross the mesh and every peer has a handshake. Namespaces and
the processes in them are removed whatever happens.

This machine's kernel has no WireGuard module (CONFIG_WIREGUARD is not set, no
/lib/modules), so wg-quick falls back to the userspace implementation, wireguard-go (Debian
package), over /dev/net/tun; with the module, the kernel's is used. Same configs either way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from netns_fixture import namespaces, netns_available, run_in
from services_fixture import service_fleet

from clonefleet.services import mesh
from deploys._paths import render
from deploys.mesh import apply_peers_command, wireguard_variables

NODES = ("ash-1", "fsn-1", "fsn-2")


def _wireguard_available() -> bool:
    if shutil.which("wg-quick") is None or shutil.which("wg") is None:
        return False
    return Path("/sys/module/wireguard").exists() or (
        shutil.which("wireguard-go") is not None and Path("/dev/net/tun").exists())


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not netns_available(), reason="needs root and `ip netns`"),
    pytest.mark.skipif(not _wireguard_available(), reason="needs wireguard-tools and the "
                       "WireGuard module or wireguard-go (scripts/setup installs them)"),
]


def _stop_processes(namespace: str) -> None:
    listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True,
                            text=True, timeout=10)
    for pid in listed.stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGTERM)


def test_rendered_configs_form_a_mesh_that_pings_and_handshakes(tmp_path: Path) -> None:
    lab = service_fleet(tmp_path)
    underlay_addresses = {name: f"192.168.77.{index + 1}" for index, name in enumerate(NODES)}
    for name, address in underlay_addresses.items():
        lab.store.set_fact(name, mesh.ENDPOINT_FACT, f"{address}:51820")
    data = {name: mesh.host_data(lab.context(name)) for name in NODES}
    # wireguard-go's control sockets live in /run/wireguard, shared by all namespaces: one
    # interface name per node (the name is the file's, not in its content).
    interfaces = {name: f"cfw{os.getpid() % 100000}{index}" for index, name in enumerate(NODES)}
    configs = {}
    for name in NODES:
        path = tmp_path / f"{interfaces[name]}.conf"
        path.write_text(render("mesh/wg0.conf.j2", **wireguard_variables(data[name])))
        path.chmod(0o600)
        configs[name] = path

    with namespaces(len(NODES) + 1, prefix="cfm-wg") as names:
        underlay, nodes = names[0], dict(zip(NODES, names[1:], strict=True))
        try:
            run_in(underlay, "ip", "link", "add", "br0", "type", "bridge")
            run_in(underlay, "ip", "link", "set", "br0", "up")
            for index, name in enumerate(NODES):
                namespace = nodes[name]
                outer, inner = f"cfu{index}", f"eth{index}"
                run_in(underlay, "ip", "link", "add", outer, "type", "veth", "peer", "name",
                       inner, "netns", namespace)
                run_in(underlay, "ip", "link", "set", outer, "master", "br0", "up")
                run_in(namespace, "ip", "addr", "add", f"{underlay_addresses[name]}/24",
                       "dev", inner)
                run_in(namespace, "ip", "link", "set", inner, "up")
            for name in NODES:
                up = run_in(nodes[name], "wg-quick", "up", str(configs[name]), check=False,
                            timeout=30)
                assert up.returncode == 0, up.stderr

            for name in NODES:
                for peer in data[name]["mesh_peers"]:
                    ping = run_in(nodes[name], "ping", "-c", "2", "-i", "0.3", "-W", "3",
                                  peer["address"], check=False, timeout=30)
                    assert ping.returncode == 0, f"{name} -> {peer['name']}: {ping.stdout}"

            deadline = time.monotonic() + 15
            while True:
                handshakes = {}
                for name in NODES:
                    shown = run_in(nodes[name], "wg", "show", interfaces[name],
                                   "latest-handshakes").stdout
                    handshakes[name] = {key: int(value) for key, value in
                                        (line.split() for line in shown.splitlines())}
                if all(len(seen) == len(NODES) - 1 and all(seen.values())
                       for seen in handshakes.values()) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            for name in NODES:
                expected = {peer["public_key"] for peer in data[name]["mesh_peers"]}
                assert set(handshakes[name]) == expected
                assert all(handshakes[name].values()), (name, handshakes[name])

            # A peer leaves the fleet: the deploy's in-place change drops it and keeps the
            # other peer's session (its handshake is still there, the ping still answers).
            first, leaving, staying = NODES
            changed = {**data[first], "mesh_peers": [peer for peer in data[first]["mesh_peers"]
                                                     if peer["name"] != leaving]}
            configs[first].write_text(render("mesh/wg0.conf.j2",
                                             **wireguard_variables(changed)))
            applied = run_in(nodes[first], "sh", "-c", apply_peers_command(
                interfaces[first], str(configs[first])), check=False)
            assert applied.returncode == 0, applied.stderr
            shown = run_in(nodes[first], "wg", "show", interfaces[first], "latest-handshakes")
            after = dict(line.split() for line in shown.stdout.splitlines())
            staying_key = data[staying]["mesh_private_key"]
            assert list(after) == [mesh.public_key(staying_key)]
            # Checked before any new traffic: a peer removed and added again would show 0 here.
            assert int(after[mesh.public_key(staying_key)]) != 0
            address = data[staying]["mesh_address"]
            assert run_in(nodes[first], "ping", "-c", "1", "-W", "3", address,
                          check=False).returncode == 0
        finally:
            for name, namespace in nodes.items():
                run_in(namespace, "wg-quick", "down", str(configs[name]), check=False,
                       timeout=30)
                _stop_processes(namespace)
            _stop_processes(underlay)
