"""The whole full-clone node: the base plus the smartwatch agent.

Host data comes from `clonefleet.pyinfra_inventory` (or `inventory/<fleet>.py`); see each
part's docstring for its keys and defaults.
"""

from __future__ import annotations

from pyinfra.api import deploy

from deploys.base import base
from deploys.smartwatch import smartwatch


@deploy("clonefleet node")
def node() -> None:
    base()
    smartwatch()
