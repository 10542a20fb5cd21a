"""The services a full-clone node runs, as the control plane knows them.

To add a service: a module in this package with `SETTINGS` and `host_data`, one line in each
table below, and its deploy in `deploys/` composed in `deploys/full.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from clonefleet.services import dns, metrics

if TYPE_CHECKING:
    from clonefleet.providers.registry import Setting
    from clonefleet.services import DeployOutcome, ServiceContext

# service name -> the keys of its [services.NAME] table in the fleet file
SETTINGS: dict[str, Mapping[str, Setting]] = {
    dns.NAME: dns.SETTINGS,
}

# functions giving one node's host data, in this order (later keys win, except the port
# lists of `clonefleet.services.UNION_KEYS`, which are joined)
HOST_DATA: list[Callable[[ServiceContext], dict[str, Any]]] = [
    dns.host_data,
    metrics.host_data,
]

# run by the deploy runner for every node after each deploy, in this order
AFTER_DEPLOY: list[Callable[[ServiceContext, DeployOutcome], None]] = [
    dns.record_endpoint,
]
