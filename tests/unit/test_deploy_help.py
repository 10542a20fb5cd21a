"""`clonefleet deploy --help` lists the exit codes the command really uses."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from clonefleet.cli import cli
from clonefleet.deploy import CHANGES_PENDING
from clonefleet.errors import ConfigError, DeployError, NotProvisionedError

pytestmark = pytest.mark.unit


def test_deploy_help_lists_the_real_exit_codes() -> None:
    shown = CliRunner().invoke(cli, ["deploy", "--help"])
    assert shown.exit_code == 0, shown.output
    section = shown.output.split("Exit codes:")[1].split("Options:")[0]
    codes = {int(code): meaning.strip() for code, meaning in
             re.findall(r"^\s+(\d+)\s+(.+)$", section, re.M)}

    assert set(codes) == {0, ConfigError.exit_code, NotProvisionedError.exit_code,
                          DeployError.exit_code, CHANGES_PENDING}
    assert "SSH address" in codes[NotProvisionedError.exit_code]
    assert "failed" in codes[DeployError.exit_code]
    assert "would change" in codes[CHANGES_PENDING]
    assert "exits 1" not in shown.output
