"""The app's systemd unit, rendered from its template as the deploy does, checked by this
machine's systemd (Debian 12's, the nodes' own): valid, and sandboxed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pyinfra.api.util import get_template

from deploys._paths import template
from deploys.app import DEMO_COMMAND, UNIT

pytestmark = pytest.mark.integration


def test_the_app_unit_is_valid_and_its_exposure_is_low(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: install Debian's systemd")
    unit = tmp_path / UNIT
    unit.write_text(get_template(template("app/clonefleet-app.service.j2"))
                    .render(command=DEMO_COMMAND))

    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    # Exposure is 0.0 (sandboxed) to 10.0 (unprotected); the threshold is in tenths.
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes",
                               "--threshold=20", str(unit)], capture_output=True, text=True,
                              timeout=60)
    assert security.returncode == 0, security.stdout[-2000:]
    assert "DynamicUser=" in unit.read_text() and "ProtectSystem=strict" in unit.read_text()
