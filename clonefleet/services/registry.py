"""The services a full-clone node runs, as the control plane knows them.

To add a service: a module in this package with `SETTINGS` and `host_data`, one line in each
table below, and its deploy in `deploys/` composed in `deploys/full.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from clonefleet.services import (
    app,
    certs,
    database,
    dns,
    mesh,
    metrics,
    smartwatch,
    transport,
    unlocker,
)

if TYPE_CHECKING:
    from clonefleet.errors import InventoryError
    from clonefleet.providers.registry import Setting
    from clonefleet.services import DeployOutcome, ServiceContext

# service name -> the keys of its [services.NAME] table in the fleet file
SETTINGS: dict[str, Mapping[str, Setting]] = {
    "certs": certs.SETTINGS,
    "app": app.SETTINGS,
    "transport": transport.SETTINGS,
    mesh.NAME: mesh.SETTINGS,
    database.NAME: database.SETTINGS,
    dns.NAME: dns.SETTINGS,
}

# checks of a service's settings against the rest of the fleet file (e.g. a node it names):
# (fleet file path, the service's settings with defaults, the fleet's nodes) -> problems
CHECKS: dict[str, Callable[[str, Mapping[str, Any], Mapping[str, Any]], list[InventoryError]]] = {
    mesh.NAME: mesh.check,
    database.NAME: database.check,
}

# functions giving one node's host data, in this order (later keys win)
HOST_DATA: list[Callable[[ServiceContext], dict[str, Any]]] = [
    mesh.host_data,
    database.host_data,
    dns.host_data,
    metrics.host_data,
    app.host_data,
    transport.host_data,
    unlocker.host_data,
]

# run by the deploy runner for every reachable node before each real deploy, in this order;
# each returns True when it changed what host data is computed from
BEFORE_DEPLOY: list[Callable[[ServiceContext], bool]] = [
    unlocker.before_deploy,
]

# run by the deploy runner for every node after each deploy, in this order
AFTER_DEPLOY: list[Callable[[ServiceContext, DeployOutcome], None]] = [
    smartwatch.after_deploy,
    dns.record_endpoint,
    unlocker.after_deploy,
]

# host data key -> makes its value the first time a deploy reads it on a node (see __init__)
LAZY_HOST_DATA: dict[str, Callable[[ServiceContext, bool], Any]] = {
    smartwatch.DRAIN_TOKEN_KEY: smartwatch.drain_token,
}
