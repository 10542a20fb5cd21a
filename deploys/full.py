"""The whole full-clone node: the base and its hardening, then every service, then the
smartwatch agent, and on the nodes named in `[unlock] unlockers` an unlocker (host data
`clonefleet_unlocker`; a node taken off that list has it removed).

Host data comes from `clonefleet.pyinfra_inventory` (or `inventory/<fleet>.py`); see each
part's docstring for its keys and defaults.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from deploys.app import app
from deploys.base import base
from deploys.database import database
from deploys.dns import dns
from deploys.hardening import hardening
from deploys.mesh import mesh
from deploys.metrics import metrics
from deploys.smartwatch import smartwatch
from deploys.transport import transport
from deploys.unlocker import unlocker, unlocker_removed


@deploy("clonefleet node")
def node() -> None:
    base()
    # Right after the base, before any service: a service's deploy runs on a hardened node,
    # and files it adds later (users, homes) follow the hardened defaults.
    hardening()
    # The mesh first among the services: the others' backend traffic runs over it.
    mesh()
    database()
    dns()
    metrics()
    # The app before HAProxy: HAProxy's health checks find it up once HAProxy starts.
    app()
    transport()
    smartwatch()
    if host.data.get("clonefleet_unlocker"):
        unlocker()
    else:
        unlocker_removed()


@deploy("clonefleet node, base only")
def base_node() -> None:
    """A node that is managed and watched but serves nothing yet: the base, its hardening and
    the smartwatch agent (burning in new hardware before it joins; the lab's disk and boot
    tests, which so boot a hardened node)."""
    base()
    hardening()
    smartwatch()
