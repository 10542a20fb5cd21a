"""`clonefleet` imports only what the chosen command needs, so it starts quickly (drain latency
counts from the command's start; see docs/dns.md, start-up)."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from clonefleet.cli import LAZY_COMMANDS, _register, cli

pytestmark = pytest.mark.unit

PROBE = """
import sys
sys.argv = ["clonefleet", *{arguments!r}]
from clonefleet.cli import main
try:
    main()
except SystemExit:
    pass
heavy = ("clonefleet.cli.", "paramiko", "pyinfra", "requests", "dns", "mmdb_writer",
         "clonefleet.provision", "clonefleet.lab", "clonefleet.install")
print(" ".join(sorted(name for name in sys.modules if name.startswith(heavy))),
      file=sys.stderr)
"""


def imported_by(*arguments: str) -> set[str]:
    finished = subprocess.run([sys.executable, "-c", PROBE.format(arguments=arguments)],
                              capture_output=True, text=True, timeout=60, check=True)
    return set(finished.stderr.split())


def test_the_lazy_command_table_lists_every_command_with_its_own_help() -> None:
    _register()
    assert set(cli.commands) == set(LAZY_COMMANDS)
    for name, (_, text) in LAZY_COMMANDS.items():
        assert cli.commands[name].get_short_help_str(200) == \
            click.Command(name, help=text).get_short_help_str(200), name


def test_help_imports_no_command_module() -> None:
    assert imported_by("--help") == set()


def test_drain_imports_the_dns_commands_but_no_ssh_deploy_http_or_dns_library() -> None:
    # dnspython is imported when the first DNS query is made, not to parse the command.
    assert imported_by("drain", "--help") == {"clonefleet.cli.dns"}
