"""The whole full-clone node: the base, the mesh, the database and the smartwatch agent.

Host data comes from `clonefleet.pyinfra_inventory` (or `inventory/<fleet>.py`); see each
part's docstring for its keys and defaults.
"""

from __future__ import annotations

from pyinfra.api import deploy

from deploys.base import base
from deploys.database import database
from deploys.mesh import mesh
from deploys.smartwatch import smartwatch


@deploy("clonefleet node")
def node() -> None:
    base()
    # Right after the base: the other services' backend traffic runs over it.
    mesh()
    database()
    smartwatch()
