"""Run a pyinfra deploy on fleet nodes, in its own process.

pyinfra needs gevent's monkey patching before anything imports ssl or socket, which must not
leak into the control plane (paramiko, sqlite, click): so clonefleet runs deploys as
`python -m clonefleet.deploy_runner` and reads a JSON summary back.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

if TYPE_CHECKING:
    from clonefleet.inventory import Fleet
    from clonefleet.state import StateStore


def run(fleet_path: str, nodes: list[str], deploy_ref: str) -> dict[str, Any]:
    from pyinfra.api.config import Config
    from pyinfra.api.connect import connect_all, disconnect_all
    from pyinfra.api.deploy import add_deploy
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.inventory import Inventory
    from pyinfra.api.operations import run_ops
    from pyinfra.api.state import State, StateStage

    from clonefleet.inventory import load_fleet
    from clonefleet.paths import PROJECT_ROOT, fleet_state_dir
    from clonefleet.pyinfra_inventory import host_data
    from clonefleet.state import open_store

    fleet = load_fleet(fleet_path)
    state_dir = fleet_state_dir(fleet.name)
    store = open_store(state_dir, fleet.state)
    hosts = host_data(fleet, store, state_dir, nodes)
    issued = _issue_drain_tokens(fleet, store, hosts)
    missing = sorted(set(nodes) - {name for name, _ in hosts})
    module_name, _, function_name = deploy_ref.partition(":")
    deploy_function = getattr(importlib.import_module(module_name), function_name)

    inventory = Inventory((hosts, {}))  # type: ignore[no-untyped-call]
    config = Config(PARALLEL=20, CONNECT_TIMEOUT=20)  # type: ignore[no-untyped-call]
    state = State(inventory=inventory, config=config)
    state.cwd = str(PROJECT_ROOT)
    collector = _ErrorCollector()
    state.add_callback_handler(collector.callbacks())  # type: ignore[no-untyped-call]
    pyinfra_logger = logging.getLogger("pyinfra")
    pyinfra_logger.addHandler(collector)
    try:
        state.set_stage(StateStage.Connect)
        # "No hosts remaining!" when every host failed (to connect, or an operation): the
        # per-host results below say why, e.g. a host key that is not the pinned one.
        with contextlib.suppress(PyinfraError):
            connect_all(state)
        if state.active_hosts:
            state.set_stage(StateStage.Prepare)
            add_deploy(state, deploy_function)
            state.set_stage(StateStage.Execute)
            with contextlib.suppress(PyinfraError):
                run_ops(state)
    finally:
        pyinfra_logger.removeHandler(collector)

    results: dict[str, Any] = {name: {"connected": False, "failed": True, "changed": [],
                                      "unchanged": 0, "errors": ["no recorded ssh address"]}
                               for name in missing}
    activated = set(inventory.iter_activated_hosts())
    for host in inventory:
        changed, errors, not_run, unchanged = [], [], [], 0
        for op_hash in state.get_op_order():  # type: ignore[no-untyped-call]
            if op_hash not in state.ops[host]:
                continue
            meta = state.ops[host][op_hash].operation_meta
            name = ", ".join(state.op_meta[op_hash].names) or op_hash
            if not meta.is_complete():
                not_run.append(name)
            elif not meta.did_succeed(_raise_if_not_complete=False):
                errors.append(f"{name}: {collector.why(host.name, op_hash)}")
            elif meta.did_change():
                changed.append(name)
            else:
                unchanged += 1
        connect_error = collector.connect_errors.get(host.name)
        host_key_refused = bool(connect_error and HOST_KEY_REFUSED.search(connect_error))
        if connect_error:
            checked = (f"; checked against {host.data.get('ssh_known_hosts_file')}"
                       if host_key_refused else "")
            errors.insert(0, f"cannot connect: {connect_error}{checked}")
        results[host.name] = {
            # Activated hosts are those that connected, whatever happened to them later.
            "connected": host in activated,
            "failed": host in state.failed_hosts or host not in activated or bool(errors),
            "changed": changed, "unchanged": unchanged, "errors": errors,
            "not_run": not_run, "host_key_refused": host_key_refused,
        }
    state.set_stage(StateStage.Disconnect)
    disconnect_all(state)
    for name in issued:
        if not results[name]["failed"]:
            store.set_fact(name, TOKEN_DELIVERED_FACT, True)
    return results


TOKEN_DELIVERED_FACT = "drain_token_delivered"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# pyinfra's words for a key that differs from the pinned one, and for an address with none
# pinned under strict checking.
HOST_KEY_REFUSED = re.compile(r"SSH host key error|No host key for .* found in known_hosts")
HOST_PREFIX = re.compile(r"^\[([^\]]+)\]\s*(?:nested\s*)?(.*)$", re.S)
# pyinfra's own summary lines ("Error: executed 0 commands") say nothing about the cause.
NOISE = re.compile(r"^Error(:? executed \d+ commands.*)?$")


class _ErrorCollector(logging.Handler):
    """Keeps what pyinfra logged about each host's current operation (its stderr, an SFTP
    or connection error), so a failed operation reports its own error, not just its name."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.current: dict[str, list[str]] = {}
        self.by_op: dict[tuple[str, str], list[str]] = {}
        self.connect_errors: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        text = ANSI.sub("", record.getMessage()).strip()
        match = HOST_PREFIX.match(text)
        if match and not NOISE.match(match.group(2).strip()):
            self.current.setdefault(match.group(1), []).append(match.group(2).strip())

    def why(self, host: str, op_hash: str) -> str:
        lines = [line for line in self.by_op.get((host, op_hash), []) if line]
        return " / ".join(lines[-3:])[:400] or "failed without output"

    def callbacks(self) -> Any:
        from pyinfra.api.state import BaseStateCallback

        collector = self

        class Callbacks(BaseStateCallback):
            @staticmethod
            def operation_host_start(state: Any, host: Any, op_hash: str) -> None:
                collector.current[host.name] = []

            @staticmethod
            def operation_host_error(state: Any, host: Any, op_hash: str,
                                     retry_count: int = 0, max_retries: int = 0) -> None:
                collector.by_op[(host.name, op_hash)] = list(collector.current.get(host.name,
                                                                                   []))

            @staticmethod
            def host_connect_error(state: Any, host: Any, error: Any) -> None:
                collector.connect_errors[host.name] = str(error)[:300]

        return Callbacks()


def _issue_drain_tokens(fleet: Fleet, store: StateStore,
                        hosts: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Give each node that never received one a fresh smartwatch drain token.

    Only its hash stays in the store; the clear token travels once, inside this deploy. A
    failed deploy leaves it undelivered, so the next deploy issues a new one.
    """
    from clonefleet.serve.tokens import issue_token

    issued = []
    for name, data in hosts:
        if not store.get_fact(name, TOKEN_DELIVERED_FACT):
            data["smartwatch_drain_token"] = issue_token(fleet, store, name)
            issued.append(name)
    return issued


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fleet", required=True)
    parser.add_argument("--deploy", default="deploys.full:node")
    parser.add_argument("--out", required=True)
    parser.add_argument("nodes", nargs="+")
    arguments = parser.parse_args()
    if os.environ.get("CLONEFLEET_VERBOSE"):  # `clonefleet -v`: pyinfra's own log too
        logging.basicConfig(level=logging.DEBUG if os.environ["CLONEFLEET_VERBOSE"] > "1"
                            else logging.INFO, format="%(name)s: %(message)s")
    sys.path.insert(0, str(Path(arguments.fleet).resolve().parent.parent))
    results = run(arguments.fleet, arguments.nodes, arguments.deploy)
    Path(arguments.out).write_text(json.dumps(results, indent=2))
    sys.exit(1 if any(result["failed"] for result in results.values()) else 0)


if __name__ == "__main__":
    main()
