"""The rendered node ruleset is one nft accepts (checked with `nft -c` inside a network
namespace of the test's own; never loaded, never in the machine's namespace)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from netns_fixture import namespaces, netns_available, run_in

from deploys._paths import render
from deploys.base import firewall_variables

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("nft") is None, reason="nft is not installed "
                       "(apt-get install nftables; scripts/setup does)"),
    pytest.mark.skipif(not netns_available(), reason="needs root and `ip netns`"),
]


@pytest.mark.parametrize("data", [
    {"clonefleet_tcp_ports": [22]},
    {"clonefleet_tcp_ports": [22, 53], "clonefleet_udp_ports": [53],
     "clonefleet_public_tcp_ports": [80, 443], "clonefleet_backend_tcp_ports": [8081, 5432],
     "clonefleet_controller_addresses": ["203.0.113.7", "2001:db8:9::/64"],
     "mesh_interface": "wg0", "mesh_port": 51820},
    {"clonefleet_tcp_ports": [22], "clonefleet_backend_tcp_ports": [8081],
     "clonefleet_controller_addresses": ["198.51.100.0/24"]},
], ids=["ssh-only", "full-clone", "controller-only"])
def test_nft_accepts_the_rendered_ruleset(tmp_path: Path, data: dict[str, object]) -> None:
    ruleset = tmp_path / "nftables.conf"
    ruleset.write_text(render("base/nftables.conf.j2", **firewall_variables(data)))
    with namespaces(1, prefix="cfm-nft") as [name]:
        result = run_in(name, "nft", "-c", "-f", str(ruleset), check=False)
    assert result.returncode == 0, result.stderr
