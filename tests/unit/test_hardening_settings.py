"""The hardening deploy's settings and how an operator relaxes them (deploys/hardening.py)."""

from __future__ import annotations

import pytest

from deploys.hardening import DISABLED_MODULES, NEVER_DISABLED, disabled_modules, sysctl_values

pytestmark = pytest.mark.unit


def test_sysctl_override_changes_a_value_and_none_drops_the_key() -> None:
    values = sysctl_values({"net.ipv4.conf.all.rp_filter": 1, "kernel.yama.ptrace_scope": None})
    assert values["net.ipv4.conf.all.rp_filter"] == 1
    assert "kernel.yama.ptrace_scope" not in values
    assert values["net.ipv4.ip_forward"] == 0


def test_sysctl_defaults_keep_ipv6_on_and_forwarding_off() -> None:
    values = sysctl_values({})
    assert values["net.ipv4.ip_forward"] == 0
    assert not any("disable_ipv6" in key for key in values)


def test_reverse_path_filter_is_loose_so_a_second_interface_and_the_mesh_keep_working() -> None:
    values = sysctl_values({})
    # the kernel applies the larger of "all" and the interface's value: both loose
    assert values["net.ipv4.conf.all.rp_filter"] == 2
    assert values["net.ipv4.conf.default.rp_filter"] == 2


def test_allowed_module_is_kept_loadable_whatever_its_spelling() -> None:
    assert "usb-storage" not in disabled_modules(["usb_storage"])
    assert "sctp" not in disabled_modules(["sctp"])
    assert "dccp" in disabled_modules(["sctp"])


def test_modules_a_node_needs_are_never_disabled() -> None:
    assert not set(DISABLED_MODULES) & NEVER_DISABLED
