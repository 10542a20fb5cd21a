"""The services' deploy hooks: before a real deploy, for every node it can reach; after it
ended, for every node it was asked for.

Each node's hooks run on their own: a hook that raises becomes that node's error and the
other nodes' hooks still run, so one node's problem never loses what the deploy made true
elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping

from clonefleet.errors import one_line
from clonefleet.inventory import Fleet
from clonefleet.secrets import SecretStore
from clonefleet.services import DeployOutcome, ServiceContext, after_deploy, before_deploy
from clonefleet.state import StateStore


def run_after_deploy(fleet: Fleet, store: StateStore, secrets: SecretStore,
                     outcomes: Mapping[str, DeployOutcome]) -> dict[str, str]:
    """Run every after-deploy hook for each node; return {node: error} for those that raised."""
    errors = {}
    for name, outcome in outcomes.items():
        try:
            after_deploy(ServiceContext(fleet, fleet.node(name), store, secrets), outcome)
        except Exception as error:  # one node's hook must not lose the others' results
            errors[name] = (f"after the deploy: {type(error).__name__}: "
                            f"{one_line(error, 300)}")
    return errors


def run_before_deploy(fleet: Fleet, store: StateStore, secrets: SecretStore,
                      nodes: list[str]) -> tuple[bool, dict[str, str]]:
    """Run every before-deploy hook for each node; return whether any changed something (the
    host data must then be computed again) and {node: error} for those that raised."""
    changed, errors = False, {}
    for name in nodes:
        try:
            changed = before_deploy(ServiceContext(fleet, fleet.node(name), store,
                                                   secrets)) or changed
        except Exception as error:  # one node's hook must not stop the others' deploys
            errors[name] = (f"before the deploy: {type(error).__name__}: "
                            f"{one_line(error, 300)}")
    return changed, errors
