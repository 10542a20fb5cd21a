"""The `clonefleet` command: parses options, calls the Python API, prints. Nothing else.

Start-up is kept short (drain latency counts from the moment the command starts): this module
imports only click and the error types; each command's module, and what it needs, is imported
when that command is run (`LAZY_COMMANDS`), and `--help` lists commands from that table
without importing any of them.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from clonefleet.errors import ClonefleetError, InventoryErrors

if TYPE_CHECKING:
    from clonefleet.inventory import Fleet
    from clonefleet.state import StateStore

DEFAULT_FLEET = "inventory/lab.toml"

# Command → (module under clonefleet.cli whose `register()` adds it, its one-line help).
# tests/unit/test_cli_startup.py checks this against the real commands.
LAZY_COMMANDS = {
    "check": ("inventory", "Validate the fleet file."),
    "status": ("inventory", "Show each node's lifecycle state (and history)."),
    "provision": ("provision", "Bare box → rescue → encrypted install → reboot → unlock → "
                               "deploy (resumable)."),
    "unlock": ("provision", "Unlock a node waiting in its initramfs (pinned Dropbear key, "
                            "keystore passphrase); --approve lets unlockd do it."),
    "unlockd": ("unlockd", "Unlock every node that waits in its initramfs, by the fleet's "
                           "policy."),
    "deploy": ("provision", "Apply a pyinfra deploy to nodes; --diff shows what it would "
                            "change."),
    "lab": ("lab", "Manage the local lab's qemu VMs and provider API fakes."),
    "dns": ("dns", "The DNS map: routed names → active nodes, on every node's PowerDNS."),
    "drain": ("dns", "Take NODE out of every DNS answer and wait until every server "
                     "confirms."),
    "undrain": ("dns", "Put NODE back into DNS answers and wait until every server "
                       "confirms."),
    "serve": ("serve", "Answer drain requests from smartwatch agents on the nodes; serve "
                       "metrics."),
    "token": ("serve", "Per-node drain tokens for smartwatch."),
    "retire": ("retire", "Delete NODE's server and forget its passphrase and facts (needs "
                         "--yes)."),
    "cert": ("cert", "The fleet's TLS certificate: ACME DNS-01 through every node's DNS "
                     "server."),
    "power": ("power", "Power nodes on, off, or reset them through their provider."),
    "keys": ("keys", "Host keys, LUKS key slots and unlockers."),
    "update": ("update", "Roll package updates across the fleet in safe batches."),
    "disks": ("disks", "Show the disk health of every node (or NODES), gathered over SSH "
                       "from smartwatch."),
}


class Context:
    """What every command needs, loaded lazily so `--help` never touches the disk."""

    def __init__(self, fleet_path: str, as_json: bool) -> None:
        self.fleet_path = fleet_path
        self.as_json = as_json
        self._documents: list[Any] = []  # JSON held until the command ends
        self._fleet: Fleet | None = None
        self._store: StateStore | None = None

    @property
    def fleet(self) -> Fleet:
        if self._fleet is None:
            from clonefleet.inventory import load_fleet

            self._fleet = load_fleet(self.fleet_path)
        return self._fleet

    @property
    def state_dir(self) -> Path:
        from clonefleet.paths import fleet_state_dir

        return fleet_state_dir(self.fleet.name)

    @property
    def store(self) -> StateStore:
        if self._store is None:
            from clonefleet.state import open_store

            self._store = open_store(self.state_dir, self.fleet.state)
        return self._store

    def emit(self, data: Any, text: str | None = None) -> None:
        """Print `data` as JSON with --json, else `text` (or nothing).

        JSON is held until the command ends (`finish`), so that an error raised after the
        result was prepared lands in the same object: one document on stdout, always.
        """
        if self.as_json:
            self._documents.append(data)
        elif text is not None:
            click.echo(text)

    def finish(self, error: ClonefleetError | click.ClickException | None = None) -> None:
        """Print the held JSON documents; with --json an error adds `error`, `exit_code` and
        `kind` to the command's result object (or is an object of its own)."""
        if not self.as_json:
            return
        documents, self._documents = self._documents, []
        if error is not None:
            fields: dict[str, Any] = {"error": error.format_message()
                                      if isinstance(error, click.ClickException) else str(error),
                                      "exit_code": error.exit_code, "kind": type(error).__name__}
            details = getattr(error, "result", None)
            if not documents and dataclasses.is_dataclass(details) \
                    and not isinstance(details, type):
                documents.append(dataclasses.asdict(details))
            if documents and isinstance(documents[-1], dict):
                documents[-1] = {**documents[-1], **fields}
            else:
                documents.append(fields)
        for document in documents:
            click.echo(json.dumps(document, indent=2, sort_keys=True, default=str))


pass_context = click.make_pass_decorator(Context)


def _load(module: str) -> None:
    importlib.import_module(f"clonefleet.cli.{module}").register(cli)


class Group(click.Group):
    """Loads commands on first use (`LAZY_COMMANDS`) and turns a `ClonefleetError` into one
    line on stderr and its exit code (plus a JSON object on stdout with --json)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            _load(LAZY_COMMANDS[cmd_name][0])
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # The help table from LAZY_COMMANDS, so `clonefleet --help` imports no command.
        limit = formatter.width - 6 - max(len(name) for name in self.list_commands(ctx))
        rows = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name) or click.Command(name,
                                                                help=LAZY_COMMANDS[name][1])
            rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            returned = super().invoke(ctx)
        except ClonefleetError as error:
            if isinstance(ctx.obj, Context):
                ctx.obj.finish(error)
            # Several problems at once (a fleet file's): one "error:" line each.
            problems = error.errors if isinstance(error, InventoryErrors) else [error]
            for problem in problems:
                click.echo(f"error: {problem}", err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            if isinstance(ctx.obj, Context):
                ctx.obj.finish(error)
            raise
        except BaseException:
            # sys.exit() in a command, ^C: what it prepared is still printed.
            if isinstance(ctx.obj, Context):
                ctx.obj.finish()
            raise
        if isinstance(ctx.obj, Context):
            ctx.obj.finish()
        return returned


@click.group(cls=Group)
@click.option(
    "--fleet",
    "fleet_path",
    default=lambda: os.environ.get("CLONEFLEET_FLEET", DEFAULT_FLEET),
    show_default=DEFAULT_FLEET,
    help="Fleet file (env CLONEFLEET_FLEET).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-v", "--verbose", count=True,
              help="Show the libraries' own logs (paramiko, pyinfra); -vv for debug.")
@click.version_option(package_name="clonefleet")
@click.pass_context
def cli(ctx: click.Context, fleet_path: str, as_json: bool, verbose: int) -> None:
    """Run a fleet of identical, encrypted bare-metal nodes."""
    configure_logging(verbose)
    ctx.obj = Context(fleet_path, as_json)


LIBRARY_LOGGERS = ("paramiko", "pyinfra")


def configure_logging(verbose: int) -> None:
    """Library logs only on request. Without a handler, Python prints warnings and errors
    of any logger to stderr, and paramiko logs a full traceback for every connection that
    fails during the banner, which clonefleet retries or reports in one line itself."""
    if verbose:
        logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO,
                            format="%(name)s: %(message)s")
        os.environ["CLONEFLEET_VERBOSE"] = str(verbose)  # for the deploy runner process
        return
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


def _register() -> None:
    """Load every command now (tests invoke `cli` directly and expect them all)."""
    for module in dict.fromkeys(module for module, _ in LAZY_COMMANDS.values()):
        _load(module)


def main() -> None:
    cli(prog_name="clonefleet")
