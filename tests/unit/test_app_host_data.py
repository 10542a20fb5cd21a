"""The app service's host data: defaults (the demo app), artifact, environment, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from fleet_text import FSN, FleetNode, fleet_toml

from clonefleet.errors import InventoryError, InventoryErrors
from clonefleet.inventory import load_fleet
from clonefleet.keystore import Keystore
from clonefleet.secrets import FLEET, open_secrets
from clonefleet.services import ServiceContext
from clonefleet.services.app import host_data
from clonefleet.state import SqliteStateStore
from deploys.app import DEFAULTS, app_environment, environment_file

pytestmark = pytest.mark.unit

FLEET_FILE = fleet_toml("t", "fleet.example.com", [FSN], [FleetNode("fsn-1", "fsn", "SER-1")])


def _context(tmp_path: Path, extra: str = "") -> ServiceContext:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET_FILE + extra)
    fleet = load_fleet(path)
    secrets = open_secrets(tmp_path / "state", Keystore(tmp_path / "state" / "keystore",
                                                        tmp_path / "age.key"))
    return ServiceContext(fleet, fleet.node("fsn-1"), SqliteStateStore(tmp_path / "s.sqlite"),
                          secrets)


def test_defaults_deploy_the_demo_app_on_loopback_8080(tmp_path: Path) -> None:
    data = host_data(_context(tmp_path))
    assert data == {"app_artifact": "", "app_command": "", "app_environment": {},
                    "app_port": 8080, "app_health_path": "/healthz"}
    assert set(data) == set(DEFAULTS)  # every key the deploy reads, nothing else


def test_an_artifact_next_to_the_fleet_file_with_its_command_and_environment(
        tmp_path: Path) -> None:
    (tmp_path / "shop.bin").write_bytes(b"\x7fELF")
    data = host_data(_context(tmp_path, """
[services.app]
artifact = "shop.bin"
command = "/opt/clonefleet-app/shop.bin --listen 127.0.0.1:9000"
port = 9000
health_path = "/up"
environment = { LOG_LEVEL = "info", WORKERS = 4 }
"""))
    assert data["app_artifact"] == str(tmp_path / "shop.bin")
    assert data["app_command"] == "/opt/clonefleet-app/shop.bin --listen 127.0.0.1:9000"
    assert data["app_environment"] == {"LOG_LEVEL": "info", "WORKERS": "4"}
    assert (data["app_port"], data["app_health_path"]) == (9000, "/up")


def test_secret_environment_values_are_generated_once_and_kept_in_the_keystore(
        tmp_path: Path) -> None:
    extra = '[services.app]\nsecret_environment = ["SESSION_SECRET"]\n'
    first = host_data(_context(tmp_path, extra))["app_environment"]["SESSION_SECRET"]
    assert len(first) >= 40
    assert host_data(_context(tmp_path, extra))["app_environment"]["SESSION_SECRET"] == first
    secrets = _context(tmp_path, extra).secrets
    assert secrets.get(FLEET, "app_env_SESSION_SECRET") == first
    assert first not in (tmp_path / "fleet.toml").read_text()


def test_a_secret_in_the_fleet_files_environment_is_refused_with_the_fix(
        tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match=r"services\.app\.environment\.DB_PASSWORD: "
                       r"secrets never go in the fleet file; remove it and add "
                       r"\"DB_PASSWORD\" to secret_environment"):
        host_data(_context(tmp_path, '[services.app]\nenvironment = { DB_PASSWORD = "x" }\n'))


def test_fleet_file_mistakes_are_reported_together_one_line_each(tmp_path: Path) -> None:
    with pytest.raises(InventoryErrors) as errors:
        host_data(_context(tmp_path, """
[services.app]
artifact = "missing.bin"
port = 80
health_path = "healthz"
environment = { PORT = "1", "bad-name" = "x", MULTI = "a\\nb" }
secret_environment = ["API_KEY", "LOG_LEVEL", "LOG_LEVEL x"]
"""))
    lines = str(errors.value).splitlines()
    expected = [
        "services.app.artifact: no file", "services.app.command: missing for an artifact",
        "services.app.port: invalid port 80", "services.app.health_path: not a URL path",
        "services.app.environment.PORT: set by clonefleet itself",
        "services.app.environment.bad-name: not a usable variable name",
        "services.app.environment.MULTI: expected a one-line string",
        "services.app.secret_environment: not a usable variable name: 'LOG_LEVEL x'",
    ]
    for text in expected:
        assert sum(text in line for line in lines) == 1, text
    assert len(lines) == len(expected)


def test_the_environment_file_is_taken_literally_by_systemd() -> None:
    text = environment_file({"B": 'say "hi" $HOME `x` \\n', "A": "plain"})
    assert text == 'A="plain"\nB="say \\"hi\\" \\$HOME \\`x\\` \\\\n"\n'


def test_the_deploy_sets_host_port_node_and_region_over_the_operators_values() -> None:
    values = app_environment({**DEFAULTS, "app_environment": {"PORT": "1", "X": 2}},
                             "fsn-1", "fsn")
    assert values == {"X": "2", "HOST": "127.0.0.1", "PORT": "8080", "CLONEFLEET_NODE": "fsn-1",
                      "CLONEFLEET_REGION": "fsn", "CLONEFLEET_HEALTH_PATH": "/healthz"}
