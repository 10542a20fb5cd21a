"""What a node's deploy sees when it is baked into its layer on the controller."""

from __future__ import annotations

import pytest

from clonefleet.image.bake import chroot_host_data

pytestmark = pytest.mark.unit


def test_baked_host_data_is_offline_without_ssh_and_without_the_unlocker() -> None:
    data = {"ssh_hostname": "127.0.0.1", "ssh_port": 40022, "ssh_key": "/k",
            "clonefleet_hostname": "fsn-1", "clonefleet_unlocker": True,
            "unlocker_store_url": "http://127.0.0.1:2379", "mesh_port": 51820}
    baked = chroot_host_data(data)
    assert not [key for key in baked if key.startswith("ssh_")]
    assert baked["clonefleet_offline"] is True
    # the unlocker's identity is made by the deploy on the node, never on the controller
    assert baked["clonefleet_unlocker"] is False
    assert baked["clonefleet_hostname"] == "fsn-1" and baked["mesh_port"] == 51820
    assert data["clonefleet_unlocker"] is True  # the caller's data is left alone
