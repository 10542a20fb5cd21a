"""The node firewall: public ports open to all, backend ports only over the mesh and from the
controller, WireGuard's port open to all."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from services_fixture import service_fleet

from clonefleet.providers.base import ProviderConfig
from clonefleet.services import mesh, registry, service_host_data
from clonefleet.services.controller import controller_networks
from deploys._paths import render
from deploys.base import firewall_variables

pytestmark = pytest.mark.unit


def _input_rules(text: str) -> list[str]:
    chain = text.split("chain input {", 1)[1].split("}\n", 1)[0]
    return [line.strip() for line in chain.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def ruleset(data: dict[str, object]) -> str:
    return render("base/nftables.conf.j2", **firewall_variables(data))


def test_backend_ports_are_open_only_on_the_mesh_and_to_the_controller() -> None:
    text = ruleset({
        "clonefleet_tcp_ports": [22, 53],
        "clonefleet_udp_ports": [53],
        "clonefleet_public_tcp_ports": [443, 80],
        "clonefleet_backend_tcp_ports": [8081, 5432],
        "clonefleet_controller_addresses": ["203.0.113.7", "2001:db8:9::/64", "198.51.100.0/24"],
        "mesh_interface": "wg0",
        "mesh_port": 51820,
    })
    rules = _input_rules(text)
    assert "tcp dport { 22, 53, 80, 443 } accept" in rules
    assert "udp dport { 53, 51820 } accept" in rules
    assert 'iifname "wg0" tcp dport { 5432, 8081 } accept' in rules
    assert "ip saddr { 203.0.113.7/32, 198.51.100.0/24 } tcp dport { 5432, 8081 } accept" in rules
    assert "ip6 saddr { 2001:db8:9::/64 } tcp dport { 5432, 8081 } accept" in rules
    # Every rule naming a backend port is limited to the mesh or the controller.
    for rule in rules:
        if re.search(r"\b(5432|8081)\b", rule):
            assert rule.startswith(('iifname "wg0"', "ip saddr", "ip6 saddr")), rule
    assert "policy drop;" in text.split("chain input {", 1)[1]


def test_without_backend_ports_or_controller_no_backend_rule_is_written() -> None:
    rules = _input_rules(ruleset({"clonefleet_tcp_ports": [22], "mesh_interface": "wg0",
                                  "mesh_port": 51820}))
    assert not any("iifname" in rule or "saddr" in rule for rule in rules)
    assert "udp dport { 51820 } accept" in rules
    # Nothing from the mesh either: 22 stays public, nothing else.
    assert "tcp dport { 22 } accept" in rules


def test_a_port_both_public_and_backend_is_public_and_ssh_is_always_open() -> None:
    variables = firewall_variables({"clonefleet_tcp_ports": [], "clonefleet_public_tcp_ports":
                                    [443], "clonefleet_backend_tcp_ports": [443, 8081]})
    assert variables["tcp_ports"] == [22, 443]
    assert variables["backend_tcp_ports"] == [8081]
    assert variables["udp_ports"] == []  # no mesh host data: no WireGuard port


def test_the_mesh_service_and_the_base_data_give_the_firewall_interface_port_controller(
        tmp_path: Path) -> None:
    lab = service_fleet(tmp_path, '[services.mesh]\nport = 51999\ninterface = "mesh0"\n',
                        fleet_extra='controller_addresses = ["192.0.2.200"]\n')
    context = lab.context("fsn-1")
    data = mesh.host_data(context)
    # what clonefleet.pyinfra_inventory puts in every node's base host data
    data["clonefleet_controller_addresses"] = controller_networks(context.fleet, context.node)
    data["clonefleet_backend_tcp_ports"] = [8081]
    rules = _input_rules(ruleset(data))
    assert "udp dport { 51999 } accept" in rules
    assert 'iifname "mesh0" tcp dport { 8081 } accept' in rules
    # (a lab node also sees the controller as qemu's gateway)
    assert "ip saddr { 10.0.2.2/32, 192.0.2.200/32 } tcp dport { 8081 } accept" in rules


def test_a_fake_providers_lab_vm_sees_the_controller_at_qemus_gateway_and_a_real_node_not(
        tmp_path: Path) -> None:
    lab = service_fleet(tmp_path)
    fleet, node = lab.fleet, lab.fleet.node("fsn-1")
    for lab_routes, expected in ((True, ["10.0.2.2/32"]), (False, [])):
        config = ProviderConfig(name="robot", driver="hetzner-robot",
                                settings={"lab_routes": lab_routes})
        robot = dataclasses.replace(fleet, controller_addresses=(),
                                    providers={**fleet.providers, "robot": config})
        assert controller_networks(robot, dataclasses.replace(node, provider="robot")) == \
            expected


def test_services_backend_ports_are_joined_and_postgresql_is_reachable_over_the_mesh_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "HOST_DATA", [
        *registry.HOST_DATA, lambda context: {"clonefleet_backend_tcp_ports": [8081],
                                              "clonefleet_public_tcp_ports": [443]}])
    lab = service_fleet(tmp_path)
    data = service_host_data(lab.context("fsn-1"))
    # The database's, the DNS API's (also the stand-in's) and the node exporter's.
    assert data["clonefleet_backend_tcp_ports"] == [5432, 8081, 9100]
    rules = _input_rules(ruleset(data))
    assert 'iifname "wg0" tcp dport { 5432, 8081, 9100 } accept' in rules
    # 443 from the stand-in service and from the transport, 80 from the transport alone.
    assert "tcp dport { 22, 80, 443 } accept" in rules
