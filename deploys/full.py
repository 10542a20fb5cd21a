"""The whole full-clone node: the base, then every service, then the smartwatch agent.

Host data comes from `clonefleet.pyinfra_inventory` (or `inventory/<fleet>.py`); see each
part's docstring for its keys and defaults.
"""

from __future__ import annotations

from pyinfra.api import deploy

from deploys.base import base
from deploys.dns import dns
from deploys.metrics import metrics
from deploys.smartwatch import smartwatch


@deploy("clonefleet node")
def node() -> None:
    base()
    # the mesh comes here (WireGuard first: backend traffic crosses it)
    dns()
    metrics()
    smartwatch()
