"""The whole full-clone node: the base, the mesh, the database, the app behind HAProxy and
the smartwatch agent.

Host data comes from `clonefleet.pyinfra_inventory` (or `inventory/<fleet>.py`); see each
part's docstring for its keys and defaults.
"""

from __future__ import annotations

from pyinfra.api import deploy

from deploys.app import app
from deploys.base import base
from deploys.database import database
from deploys.mesh import mesh
from deploys.smartwatch import smartwatch
from deploys.transport import transport


@deploy("clonefleet node")
def node() -> None:
    base()
    # Right after the base: the other services' backend traffic runs over it.
    mesh()
    database()
    # The app before HAProxy: HAProxy's health checks find it up once HAProxy starts.
    app()
    transport()
    smartwatch()
