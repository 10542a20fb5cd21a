"""The `clonefleet` command: parses options, calls the Python API, prints. Nothing else."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from clonefleet.errors import ClonefleetError
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.paths import fleet_state_dir
from clonefleet.state import SqliteStateStore, open_store

DEFAULT_FLEET = "inventory/lab.toml"


class Context:
    """What every command needs, loaded lazily so `--help` never touches the disk."""

    def __init__(self, fleet_path: str, as_json: bool) -> None:
        self.fleet_path = fleet_path
        self.as_json = as_json
        self._fleet: Fleet | None = None
        self._store: SqliteStateStore | None = None

    @property
    def fleet(self) -> Fleet:
        if self._fleet is None:
            self._fleet = load_fleet(self.fleet_path)
        return self._fleet

    @property
    def state_dir(self) -> Path:
        return fleet_state_dir(self.fleet.name)

    @property
    def store(self) -> SqliteStateStore:
        if self._store is None:
            self._store = open_store(self.state_dir)
        return self._store

    def emit(self, data: Any, text: str | None = None) -> None:
        """Print `data` as JSON with --json, else `text` (or nothing)."""
        if self.as_json:
            click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        elif text is not None:
            click.echo(text)


pass_context = click.make_pass_decorator(Context)


class Group(click.Group):
    """Turns a `ClonefleetError` into one line on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClonefleetError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(error.exit_code)


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
    from clonefleet.cli import inventory as inventory_commands
    from clonefleet.cli import lab as lab_commands
    from clonefleet.cli import provision as provision_commands

    inventory_commands.register(cli)
    provision_commands.register(cli)
    lab_commands.register(cli)
    from clonefleet.cli import dns as dns_commands

    dns_commands.register(cli)
    from clonefleet.cli import serve as serve_commands

    serve_commands.register(cli)
    from clonefleet.cli import disks as disks_commands

    disks_commands.register(cli)


def main() -> None:
    _register()
    cli(prog_name="clonefleet")
