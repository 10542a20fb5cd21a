"""Read the rollout's facts on fleet nodes with pyinfra, in parallel, in a process of its own.

pyinfra needs gevent's monkey patching, which must not leak into the control plane (as for
`clonefleet.deploy_runner`): `clonefleet.rollout.plan` runs `python -m clonefleet.rollout.gather`
and reads a JSON document back. The inventory is the deploy's (`pyinfra_inventory.host_data`):
the fleet's known_hosts with the pinned keys, strict checking, so a node answering with
another key is refused exactly as a deploy would refuse it. Nothing on the nodes changes but,
when refreshing, their apt package lists.

Output, per node: {"connected", "error", "facts": {NAME: {"exit", "output"}}}.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from clonefleet.errors import one_line  # noqa: E402

# How many nodes are read at once: each is one SSH session doing little.
PARALLEL = 50
CONNECT_TIMEOUT = 20
# apt-get update against a slow mirror, then the simulation: bounded per node.
FACT_TIMEOUT = 600


def gather(fleet_path: str, nodes: list[str], refresh: bool = True) -> dict[str, Any]:
    from pyinfra.api.config import Config
    from pyinfra.api.connect import connect_all, disconnect_all
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.facts import get_facts
    from pyinfra.api.inventory import Inventory
    from pyinfra.api.state import BaseStateCallback, State, StateStage

    from clonefleet.deploy_runner import ANSI, HOST_KEY_REFUSED, HOST_PREFIX, NOISE
    from clonefleet.inventory import load_fleet
    from clonefleet.paths import fleet_state_dir
    from clonefleet.pyinfra_inventory import host_data
    from clonefleet.rollout.facts import NeedRestartBatch, RebootRequiredFlag, UpgradeSimulation
    from clonefleet.state import open_store

    fleet = load_fleet(fleet_path)
    state_dir = fleet_state_dir(fleet.name)
    store = open_store(state_dir, fleet.state)
    hosts = host_data(fleet, store, state_dir, nodes)
    results: dict[str, Any] = {
        name: {"connected": False, "error": "no SSH address is recorded (never provisioned?)",
               "facts": {}} for name in nodes}
    if not hosts:
        return results
    connect_errors: dict[str, str] = {}

    class Callbacks(BaseStateCallback):
        @staticmethod
        def host_connect_error(state: Any, host: Any, error: Any) -> None:
            connect_errors[host.name] = one_line(error, 300)

    said: dict[str, list[str]] = {}

    class Said(logging.Handler):
        """What pyinfra logged about each host (a fact whose session failed says why)."""

        def emit(self, record: logging.LogRecord) -> None:
            match = HOST_PREFIX.match(ANSI.sub("", record.getMessage()).strip())
            if match and not NOISE.match(match.group(2).strip()):
                said.setdefault(match.group(1), []).append(match.group(2).strip())

    handler = Said(logging.WARNING)
    logging.getLogger("pyinfra").addHandler(handler)
    inventory = Inventory((hosts, {}))  # type: ignore[no-untyped-call]
    config = Config(PARALLEL=min(PARALLEL, len(hosts)),  # type: ignore[no-untyped-call]
                    CONNECT_TIMEOUT=CONNECT_TIMEOUT)
    state = State(inventory=inventory, config=config)
    state.add_callback_handler(Callbacks())  # type: ignore[no-untyped-call]
    state.set_stage(StateStage.Connect)
    with contextlib.suppress(PyinfraError):  # every host failing to connect
        connect_all(state)
    facts: dict[str, dict[str, Any]] = {host.name: {} for host in inventory}
    if state.active_hosts:
        state.set_stage(StateStage.Prepare)
        # A fact that cannot even run is the node's error, never the end of the others'.
        common = {"_ignore_errors": True, "_timeout": FACT_TIMEOUT}
        for name, fact, kwargs in (("upgrades", UpgradeSimulation, {"refresh": refresh}),
                                   ("reboot_required", RebootRequiredFlag, {}),
                                   ("needrestart", NeedRestartBatch, {})):
            for host, value in get_facts(  # type: ignore[no-untyped-call]
                    state, fact, kwargs={**kwargs, **common}).items():
                if value is not None:
                    facts[host.name][name] = value
                else:
                    facts[host.name][name] = {"exit": 255, "output": "\n".join(
                        said.get(host.name, ["the command did not run"])[-3:])}
    activated = set(inventory.iter_activated_hosts())
    for host in inventory:
        error = ""
        if host not in activated:
            error = f"cannot connect: {connect_errors.get(host.name, 'no answer')}"
            if HOST_KEY_REFUSED.search(error):
                error += f"; checked against {host.data.get('ssh_known_hosts_file')}"
        results[host.name] = {"connected": host in activated, "error": error,
                              "facts": facts[host.name]}
    state.set_stage(StateStage.Disconnect)
    disconnect_all(state)
    logging.getLogger("pyinfra").removeHandler(handler)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fleet", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--no-refresh", action="store_true",
                        help="Do not run apt-get update first.")
    parser.add_argument("nodes", nargs="+")
    arguments = parser.parse_args()
    if os.environ.get("CLONEFLEET_VERBOSE"):
        logging.basicConfig(level=logging.DEBUG if os.environ["CLONEFLEET_VERBOSE"] > "1"
                            else logging.INFO, format="%(name)s: %(message)s")
    else:
        logging.getLogger("pyinfra").addHandler(logging.NullHandler())
        logging.getLogger("pyinfra").propagate = False
    sys.path.insert(0, str(Path(arguments.fleet).resolve().parent.parent))
    results = gather(arguments.fleet, arguments.nodes, refresh=not arguments.no_refresh)
    Path(arguments.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
