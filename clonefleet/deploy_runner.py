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
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

from clonefleet.errors import one_line  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable

    from clonefleet.deploy_diff import DiffRecorder
    from clonefleet.deploy_facts import FactList, FactReadings
    from clonefleet.inventory import Fleet
    from clonefleet.lazy_host_data import LazyHostData
    from clonefleet.secrets import SecretStore
    from clonefleet.state import StateStore


def run(fleet_path: str, nodes: list[str], deploy_ref: str,
        dry_run: bool = False, chroot: str | None = None) -> dict[str, Any]:
    """Apply `deploy_ref` to `nodes` (or, with `dry_run`, only find what it would change) and
    return each node's result. Before a real run, every service's before-deploy hook runs for
    every reachable node (and the host data is computed again when one changed something);
    after it, every after-deploy hook for every node (a hook that raises is that node's
    error, the others keep their results), even when the run itself broke off, so that a
    hook can undo what it prepared."""
    from clonefleet.inventory import load_fleet
    from clonefleet.paths import fleet_state_dir
    from clonefleet.pyinfra_inventory import host_data
    from clonefleet.secrets import open_secrets
    from clonefleet.state import open_store

    fleet = load_fleet(fleet_path)
    state_dir = fleet_state_dir(fleet.name)
    store = open_store(state_dir, fleet.state)
    secrets = open_secrets(state_dir)
    hosts = host_data(fleet, store, state_dir, nodes)
    if chroot is not None:
        return _run_in_chroot(secrets, hosts, nodes, deploy_ref, chroot, state_dir)
    before_errors: dict[str, str] = {}
    if not dry_run and hosts:
        from clonefleet.deploy_hooks import run_before_deploy

        changed, before_errors = run_before_deploy(fleet, store, secrets,
                                                   [name for name, _ in hosts])
        if changed:  # e.g. an unlocker granted: every node's Dropbear keys change with it
            hosts = host_data(fleet, store, state_dir, nodes)
    missing = sorted(set(nodes) - {name for name, _ in hosts})
    module_name, _, function_name = deploy_ref.partition(":")
    deploy_function = getattr(importlib.import_module(module_name), function_name)

    results: dict[str, Any] = {name: {"connected": False, "failed": True, "changed": [],
                                      "unchanged": 0, "errors": ["no recorded ssh address"]}
                               for name in missing}
    succeeded: dict[str, frozenset[str]] = {}
    lazy = _lazy_host_data(fleet, store, secrets, dry_run)
    try:
        if hosts:  # pyinfra cannot make a State of an empty inventory
            _run_pyinfra(hosts, lazy, deploy_function, dry_run, secrets, results, succeeded,
                         {name: _fact_list(state_dir, name, deploy_ref) for name, _ in hosts})
    except BaseException:
        if not dry_run:
            for name in nodes:
                results.setdefault(name, {"failed": True, "errors": []})["failed"] = True
            _after_deploy(fleet, store, secrets, nodes, results, {})
        raise
    for name, error in before_errors.items():
        results[name]["failed"] = True
        results[name]["errors"].insert(0, error)
    if not dry_run:
        _after_deploy(fleet, store, secrets, nodes, results, succeeded)
    return results


def _run_in_chroot(secrets: SecretStore, hosts: list[tuple[str, dict[str, Any]]],
                   nodes: list[str], deploy_ref: str, root: str,
                   state_dir: Path) -> dict[str, Any]:
    """Apply the deploy offline (`clonefleet_offline`) to a root filesystem at `root` on this
    machine, through pyinfra's `@chroot` connector, with the node's own host data: the node
    layer of an install (`clonefleet.image.bake`). Nothing is recorded in the store: no hook
    runs and no lazy value (a drain token) is made, so the node's first real deploy still
    delivers what only a deploy on the node may."""
    from clonefleet.image.bake import chroot_host_data
    from clonefleet.lazy_host_data import LazyHostData

    if len(nodes) != 1 or len(hosts) != 1:
        raise SystemExit(f"--chroot takes exactly one node with a recorded address, not "
                         f"{' '.join(nodes) or 'none'}")
    name, data = hosts[0]
    target = f"@chroot/{root.lstrip('/')}"
    data = chroot_host_data(data)
    module_name, _, function_name = deploy_ref.partition(":")
    deploy_function = getattr(importlib.import_module(module_name), function_name)
    results: dict[str, Any] = {}
    lists = {target: _fact_list(state_dir, name, deploy_ref)}
    _run_pyinfra([(target, data)], LazyHostData({}), deploy_function, False, secrets,
                 results, {}, lists)
    if not results[target]["failed"]:
        # Prepared once more as the node's first deploy over SSH will prepare it (online),
        # changing nothing, only to list the facts it asks: those of files it finds nothing
        # to do with (a file's checksum, not just its absence) and those only a running node
        # can answer (a unit's state), which answer their default here. That deploy then
        # reads nearly all of its facts in one go.
        online = {**data, "clonefleet_offline": False}
        _run_pyinfra([(target, online)], LazyHostData({}), deploy_function, True, secrets,
                     {}, {}, lists, save_fact_lists=True, list_only=True)
    return {name: results[target]}


def _fact_list(state_dir: Path, node: str, deploy_ref: str) -> FactList:
    """Where the facts `deploy_ref` read on `node` are listed (each deploy reads its own)."""
    from clonefleet.deploy_facts import FactList

    return FactList(state_dir / "facts-read" / node / f"{deploy_ref.replace(':', '.')}.json")


def _run_pyinfra(hosts: list[tuple[str, dict[str, Any]]], lazy: LazyHostData,
                 deploy_function: Callable[..., Any], dry_run: bool, secrets: SecretStore,
                 results: dict[str, Any], succeeded: dict[str, frozenset[str]],
                 fact_lists: dict[str, FactList], save_fact_lists: bool | None = None,
                 list_only: bool = False) -> None:
    """Connect, prepare and (unless `dry_run`) run; each host's result into `results`.
    `fact_lists`: per inventory host, the list of facts its deploys read, saved again after
    the preparation when `save_fact_lists` (default: not on a dry run). `list_only` (with
    `dry_run`): a fact that cannot be read answers its default (`answer_or_default`)."""
    from pyinfra.api.config import Config
    from pyinfra.api.connect import connect_all, disconnect_all
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.inventory import Inventory
    from pyinfra.api.operations import run_ops
    from pyinfra.api.state import State, StateStage

    from clonefleet.deploy_diff import DiffRecorder
    from clonefleet.paths import PROJECT_ROOT

    inventory = Inventory((hosts, {}), override_data=lazy)  # type: ignore[no-untyped-call]
    # DIFF: pyinfra's file operations compare contents while the deploy is prepared.
    config = Config(PARALLEL=20, CONNECT_TIMEOUT=20, DIFF=dry_run)  # type: ignore[no-untyped-call]
    state = State(inventory=inventory, config=config)
    state.cwd = str(PROJECT_ROOT)
    collector = _ErrorCollector()
    state.add_callback_handler(collector.callbacks())  # type: ignore[no-untyped-call]
    pyinfra_logger = logging.getLogger("pyinfra")
    pyinfra_logger.addHandler(collector)
    recorder = DiffRecorder()
    prepare_errors: dict[str, str] = {}
    phases: dict[str, float] = {}
    prepare_seconds: dict[str, float] = {}
    readings: dict[str, FactReadings] = {}
    shadows = contextlib.ExitStack()  # each host's fact readings, until the run is over
    try:
        state.set_stage(StateStage.Connect)
        started = time.monotonic()
        # "No hosts remaining!" when every host failed (to connect, or an operation): the
        # per-host results below say why, e.g. a host key that is not the pinned one.
        with contextlib.suppress(PyinfraError):
            connect_all(state)
        phases["connect"] = time.monotonic() - started
        if state.active_hosts:
            state.set_stage(StateStage.Prepare)
            with recorder if dry_run else contextlib.nullcontext():
                prepare_errors = _prepare_each(state, deploy_function, prepare_seconds,
                                               fact_lists, readings, shadows,
                                               not dry_run if save_fact_lists is None
                                               else save_fact_lists, list_only)
            # A host whose deploy could not be prepared runs none of it.
            with contextlib.suppress(PyinfraError):
                state.fail_hosts(  # type: ignore[no-untyped-call]
                    {host for host in inventory if host.name in prepare_errors})
        if not dry_run and state.active_hosts:
            from clonefleet.deploy_facts import reuse_at_execution

            reuse_at_execution(state, readings)
            state.set_stage(StateStage.Execute)
            started = time.monotonic()
            try:
                run_ops(state)
            except PyinfraError as error:
                # "No hosts remaining", or an operation that raised (an SFTP upload
                # refused): the latter leaves its host's operations unrun.
                collector.run_error = one_line(error, 300)
            phases["execute"] = time.monotonic() - started
    finally:
        shadows.close()
        pyinfra_logger.removeHandler(collector)
    activated = set(inventory.iter_activated_hosts())
    for host in inventory:
        if dry_run:
            results[host.name] = _planned(state, host, recorder,
                                          _masked_values(secrets, host.name, lazy))
        else:
            results[host.name], succeeded[host.name] = _outcome(state, host, collector)
        if host.name in prepare_errors:
            results[host.name]["errors"].insert(0, prepare_errors[host.name])
        results[host.name]["timings"] = _timings(state, host, phases,
                                                 prepare_seconds.get(host.name, 0.0), collector)
        if host.name in readings:
            results[host.name]["timings"]["facts"] = {
                "in one go": readings[host.name].in_one_go,
                "alone": readings[host.name].alone}
        _connection_result(results[host.name], host, host in activated, collector)
    state.set_stage(StateStage.Disconnect)
    disconnect_all(state)


def _lazy_host_data(fleet: Fleet, store: StateStore, secrets: SecretStore,
                    dry_run: bool) -> LazyHostData:
    from clonefleet.lazy_host_data import LazyHostData
    from clonefleet.services import ServiceContext
    from clonefleet.services.registry import LAZY_HOST_DATA

    def maker(make: Callable[[ServiceContext, bool], Any]) -> Callable[[str], Any]:
        return lambda node: make(ServiceContext(fleet, fleet.node(node), store, secrets),
                                 dry_run)

    return LazyHostData({key: maker(make) for key, make in LAZY_HOST_DATA.items()})


def _outcome(state: Any, host: Any,
             collector: _ErrorCollector) -> tuple[dict[str, Any], frozenset[str]]:
    """What the deploy did on `host`, and the names of its operations that succeeded."""
    changed, errors, not_run, unchanged = [], [], [], 0
    succeeded: set[str] = set()
    for op_hash in state.get_op_order():
        if op_hash not in state.ops[host]:
            continue
        op_data = state.ops[host][op_hash]
        meta = op_data.operation_meta
        names = state.op_meta[op_hash].names
        name = ", ".join(names) or op_hash
        if not meta.is_complete():
            not_run.append(name)
        elif not meta.did_succeed(_raise_if_not_complete=False):
            errors.append(f"{name}: {collector.why(host.name, op_hash)}")
        else:
            # As given in `name=`, and in full ("deploy | sub-deploy | name").
            succeeded.update(names)
            if op_data.global_arguments.get("name"):
                succeeded.add(str(op_data.global_arguments["name"]))
            if meta.did_change():
                changed.append(name)
            else:
                unchanged += 1
    if not_run and not errors and collector.run_error:
        errors.append(f"{not_run[0]}: did not complete: {collector.run_error}")
        not_run = not_run[1:]
    result = {"failed": host in state.failed_hosts or bool(errors or not_run),
              "changed": changed,
              "unchanged": unchanged, "errors": errors, "not_run": not_run}
    return result, frozenset(succeeded)


def _connection_result(result: dict[str, Any], host: Any, activated: bool,
                       collector: _ErrorCollector) -> None:
    connect_error = collector.connect_errors.get(host.name)
    host_key_refused = bool(connect_error and HOST_KEY_REFUSED.search(connect_error))
    if connect_error:
        checked = (f"; checked against {host.data.get('ssh_known_hosts_file')}"
                   if host_key_refused else "")
        result["errors"].insert(0, f"cannot connect: {connect_error}{checked}")
    # Activated hosts are those that connected, whatever happened to them later.
    result["connected"] = activated
    result["failed"] = result["failed"] or not activated or bool(result["errors"])
    result["host_key_refused"] = host_key_refused


def _after_deploy(fleet: Fleet, store: StateStore, secrets: SecretStore, nodes: list[str],
                  results: dict[str, Any], succeeded: dict[str, frozenset[str]]) -> None:
    """Every service's after-deploy hooks, for every node asked for (even one that could not
    be reached: a hook may have to undo what it prepared for it)."""
    from clonefleet.deploy_hooks import run_after_deploy
    from clonefleet.services import DeployOutcome

    outcomes = {name: DeployOutcome(failed=bool(results[name]["failed"]),
                                    succeeded=succeeded.get(name, frozenset()))
                for name in nodes}
    for name, error in run_after_deploy(fleet, store, secrets, outcomes).items():
        results[name]["failed"] = True
        results[name]["errors"].append(error)


def _prepare_each(state: Any, deploy_function: Callable[..., Any],
                  seconds: dict[str, float], fact_lists: dict[str, FactList],
                  readings: dict[str, FactReadings], shadows: contextlib.ExitStack,
                  save_lists: bool, list_only: bool = False) -> dict[str, str]:
    """Prepare the deploy on every host at once (one greenlet each, as the pyinfra CLI
    does), so that an operation that cannot even be prepared (a fact that fails, a path of
    the wrong type) is that host's error, not everyone's.

    Facts (`clonefleet.deploy_facts`): those the host's last deploy read are read first in
    one command, the rest on their own, each once; the list of what was read is saved for
    the next run (`save_lists`). Each host's `FactReadings` go into `readings`, and stay in
    use until `shadows` is closed (after the run). Each host's preparation time goes into
    `seconds`. `list_only`: facts that cannot be read answer their default."""
    import gevent
    from pyinfra.api.deploy import add_deploy
    from pyinfra.context import ctx_config, ctx_inventory, ctx_state

    from clonefleet.deploy_facts import (
        FactReadings,
        answer_or_default,
        facts_read_once,
        read_in_one_go,
    )

    errors = {}

    def prepare(host: Any) -> None:
        started = time.monotonic()
        fact_list = fact_lists.get(host.name)
        try:
            known = read_in_one_go(host, fact_list.load()) if fact_list else {}
        except Exception:  # the list is only a shortcut: read each fact on its own
            logging.getLogger(__name__).debug("facts in one go failed", exc_info=True)
            known = {}
        readings[host.name] = shadows.enter_context(facts_read_once(
            host, FactReadings(known), answer_or_default(host) if list_only else None))
        try:
            with ctx_config.use(state.config.copy()):
                add_deploy(state, deploy_function, host=host)
                if list_only:
                    _ask_to_the_end(state, host)
        except Exception as error:  # reported as the host's own error
            errors[host.name] = (f"cannot prepare the deploy: {type(error).__name__}: "
                                 f"{one_line(error, 300)}")
        if fact_list and save_lists:  # what was read up to a failure helps the next try
            fact_list.save(readings[host.name].listed())
        seconds[host.name] = time.monotonic() - started

    # pyinfra's state context is one for all greenlets (only host and config are local):
    # set for the whole preparation, as pyinfra's CLI does, so that one host's add_deploy
    # leaving it does not reset it under another host still preparing (which then failed
    # with "State.get_meta_for_host() missing 1 required positional argument").
    with ctx_state.use(state), ctx_inventory.use(state.inventory):
        gevent.joinall([state.pool.spawn(prepare, host)
                        for host in list(state.inventory.get_active_hosts())])
    return errors


def _ask_to_the_end(state: Any, host: Any) -> None:
    """Run each prepared operation of `host` to its end, commands discarded: pyinfra stops
    preparing an operation at its first command, so the facts it would ask after that (a
    unit's enabled state after "start it") would not be listed otherwise. Called inside
    `_prepare_each`, which holds pyinfra's state context; the host context is per greenlet."""
    from pyinfra.context import ctx_host

    with ctx_host.use(host):
        for op_hash in state.get_op_order():
            op_data = state.ops.get(host, {}).get(op_hash)
            if op_data is not None:
                with contextlib.suppress(Exception):  # listing only: what it asked is kept
                    for _command in op_data.command_generator():
                        pass


SLOWEST = 8  # operations named in a deploy's timings


def _timings(state: Any, host: Any, phases: dict[str, float], prepare: float,
             collector: _ErrorCollector) -> dict[str, Any]:
    """Where the deploy's time went on `host`: connecting (all hosts at once), preparing
    (its facts), running its operations (all hosts at once), and its slowest operations."""
    ran = [(", ".join(state.op_meta[op_hash].names) or op_hash, seconds)
           for op_hash, seconds in collector.op_seconds.get(host.name, {}).items()]
    ran.sort(key=lambda item: -item[1])
    return {"connect": round(phases.get("connect", 0.0), 2), "prepare": round(prepare, 2),
            "execute": round(phases.get("execute", 0.0), 2), "operations": len(ran),
            "slowest": [[name, round(seconds, 2)] for name, seconds in ran[:SLOWEST]]}


def _masked_values(secrets: SecretStore, node: str, lazy: LazyHostData) -> list[str]:
    """Every secret value the node's deploy may hold: never shown by --diff."""
    from clonefleet.secrets import FLEET

    values = [str(value) for value in lazy.values_for(node)]
    for scope in (node, FLEET):
        values.extend(secrets.get(scope, name) for name in secrets.names(scope))
    return values


def _planned(state: Any, host: Any, recorder: DiffRecorder,
             secrets: list[str]) -> dict[str, Any]:
    """What the prepared deploy would change on `host` (nothing is run)."""
    from clonefleet.deploy_diff import file_diffs, mask

    changes, unchanged = [], 0
    for op_hash in state.get_op_order():
        if op_hash not in state.ops[host]:
            continue
        op_data = state.ops[host][op_hash]
        if not op_data.operation_meta._maybe_is_change:
            unchanged += 1
            continue
        name = mask(", ".join(state.op_meta[op_hash].names) or op_hash, secrets)
        changes.append({
            "operation": name,
            # Runs only if its condition holds then (e.g. a reload after a changed config).
            "conditional": bool(op_data.global_arguments.get("_if")),
            "files": file_diffs(recorder.for_operation(host.name, op_hash), secrets),
        })
    # A conditional operation alone changes nothing: its conditions are other changes.
    if all(change["conditional"] for change in changes):
        unchanged += len(changes)
        changes = []
    return {"failed": host in state.failed_hosts, "changes": changes, "unchanged": unchanged,
            "errors": []}


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
        self.started: dict[str, float] = {}  # host → when its current operation started
        self.op_seconds: dict[str, dict[str, float]] = {}  # host → {op hash: seconds run}
        self.current: dict[str, list[str]] = {}
        self.by_op: dict[tuple[str, str], list[str]] = {}
        self.connect_errors: dict[str, str] = {}
        self.run_error = ""  # what stopped the run, when pyinfra raised

    def emit(self, record: logging.LogRecord) -> None:
        text = ANSI.sub("", record.getMessage()).strip()
        match = HOST_PREFIX.match(text)
        if match and not NOISE.match(match.group(2).strip()):
            self.current.setdefault(match.group(1), []).append(match.group(2).strip())

    def ran(self, host: str, op_hash: str) -> None:
        if host in self.started:
            self.op_seconds.setdefault(host, {})[op_hash] = (time.monotonic()
                                                              - self.started.pop(host))

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
                collector.started[host.name] = time.monotonic()

            @staticmethod
            def operation_host_success(state: Any, host: Any, op_hash: str,
                                       retry_count: int = 0) -> None:
                collector.ran(host.name, op_hash)

            @staticmethod
            def operation_host_error(state: Any, host: Any, op_hash: str,
                                     retry_count: int = 0, max_retries: int = 0) -> None:
                collector.ran(host.name, op_hash)
                collector.by_op[(host.name, op_hash)] = list(collector.current.get(host.name,
                                                                                   []))

            @staticmethod
            def host_connect_error(state: Any, host: Any, error: Any) -> None:
                collector.connect_errors[host.name] = str(error)[:300]

        return Callbacks()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fleet", required=True)
    parser.add_argument("--deploy", default="deploys.full:node")
    parser.add_argument("--out", required=True)
    parser.add_argument("--dry-run", action="store_true",
                        help="Only find what the deploy would change (pyinfra's --dry --diff).")
    parser.add_argument("--chroot", metavar="ROOT",
                        help="Apply the deploy offline to the root filesystem at ROOT on this "
                             "machine (one node; no hook runs).")
    parser.add_argument("nodes", nargs="+")
    arguments = parser.parse_args()
    if os.environ.get("CLONEFLEET_VERBOSE"):  # `clonefleet -v`: pyinfra's own log too
        logging.basicConfig(level=logging.DEBUG if os.environ["CLONEFLEET_VERBOSE"] > "1"
                            else logging.INFO, format="%(name)s: %(message)s")
    sys.path.insert(0, str(Path(arguments.fleet).resolve().parent.parent))
    results = run(arguments.fleet, arguments.nodes, arguments.deploy, arguments.dry_run,
                  arguments.chroot)
    Path(arguments.out).write_text(json.dumps(results, indent=2))
    sys.exit(1 if any(result["failed"] for result in results.values()) else 0)


if __name__ == "__main__":
    main()
