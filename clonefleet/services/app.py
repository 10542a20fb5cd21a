"""The `app` service: the operator's application as a hardened systemd service on loopback.

Fleet file, `[services.app]`: `artifact` (a file on the controller, copied to
`/opt/clonefleet-app/`; empty: the demo app), `command`, `environment` (plain settings),
`secret_environment` (names of variables whose values are secrets: generated once, kept in
the age-encrypted secret store under the fleet scope as `app_env_<NAME>`, never in the fleet
file), `port` (loopback) and `health_path`. Host data for `deploys/app.py`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from clonefleet.errors import InventoryError, InventoryErrors
from clonefleet.inventory import Fleet
from clonefleet.inventory.load import SECRET_RE
from clonefleet.providers.registry import Setting
from clonefleet.secrets import FLEET, SecretStore, random_token
from clonefleet.services import ServiceContext

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Set by the deploy itself (deploys/app.py); the operator's environment must not set them.
RESERVED = {"PORT", "HOST", "CLONEFLEET_NODE", "CLONEFLEET_REGION", "CLONEFLEET_HEALTH_PATH"}
SECRET_PREFIX = "app_env_"

SETTINGS = {
    "artifact": Setting(str, "the application file on this controller, copied to "
                             "/opt/clonefleet-app/ (relative to the fleet file; empty: the "
                             "demo app)", default=""),
    "command": Setting(str, "the command that runs it (empty: the demo app's)", default=""),
    "environment": Setting(dict, "environment variables (no secrets: see secret_environment)",
                           default={}),
    "secret_environment": Setting(list, "names of secret environment variables, generated "
                                        "once and kept in the keystore", default=[]),
    "port": Setting(int, "the port the app listens on, on loopback", default=8080),
    "health_path": Setting(str, "the app's health URL path (200 when healthy)",
                           default="/healthz"),
}


def _settings(fleet: Fleet) -> dict[str, Any]:
    defaults = {key: setting.default for key, setting in SETTINGS.items()}
    return {**defaults, **fleet.services.get("app", {})}


def check_settings(fleet: Fleet) -> list[InventoryError]:
    """Every problem of `[services.app]` beyond types, one error each."""
    settings, path, errors = _settings(fleet), str(fleet.path), []

    def fail(key: str, problem: str, fix: str) -> None:
        errors.append(InventoryError(path, f"services.app.{key}", problem, fix))

    artifact = settings["artifact"]
    if artifact and not artifact_path(fleet).is_file():
        fail("artifact", f"no file {str(artifact_path(fleet))!r}",
             "name an existing file on this controller (relative to the fleet file)")
    if artifact and not settings["command"].strip():
        fail("command", "missing for an artifact",
             f"set the command that runs it, e.g. \"/opt/clonefleet-app/{Path(artifact).name}\"")
    if not 1024 <= settings["port"] <= 65535:
        fail("port", f"invalid port {settings['port']}", "use 1024-65535 (loopback only)")
    if not re.match(r"^/[\x21-\x7e]*$", settings["health_path"]):
        fail("health_path", f"not a URL path: {settings['health_path']!r}",
             "use a path such as \"/healthz\"")
    for name, value in settings["environment"].items():
        where = f"environment.{name}"
        if not ENV_NAME.match(name) or name in RESERVED:
            fail(where, "not a usable variable name" if name not in RESERVED else
                 "set by clonefleet itself", "use another name (letters, digits, '_')")
        elif SECRET_RE.search(name.lower()):
            fail(where, "secrets never go in the fleet file",
                 f"remove it and add \"{name}\" to secret_environment (its value is generated "
                 "once and kept in the keystore)")
        elif isinstance(value, bool) or not isinstance(value, str | int | float) \
                or "\n" in str(value):
            fail(where, "expected a one-line string or a number", "fix its value")
    for name in settings["secret_environment"]:
        if not isinstance(name, str) or not ENV_NAME.match(name) or name in RESERVED:
            fail("secret_environment", f"not a usable variable name: {name!r}",
                 "use letters, digits and '_'")
        elif name in settings["environment"]:
            fail("secret_environment", f"{name} is also in environment", "keep it in one")
    return errors


def artifact_path(fleet: Fleet) -> Path:
    """The artifact on the controller ("" when the demo app is deployed)."""
    artifact = _settings(fleet)["artifact"]
    if not artifact:
        return Path()
    path = Path(artifact).expanduser()
    return path if path.is_absolute() else fleet.path.parent / path


def environment(fleet: Fleet, secrets: SecretStore) -> dict[str, str]:
    """The operator's environment for the app, secrets included (for the deploy only); the
    deploy adds HOST, PORT and the node's name and region itself."""
    settings = _settings(fleet)
    values = {name: str(value) for name, value in settings["environment"].items()}
    for name in settings["secret_environment"]:
        values[name] = secrets.get_or_create(FLEET, f"{SECRET_PREFIX}{name}", random_token)
    return dict(sorted(values.items()))


def host_data(context: ServiceContext) -> dict[str, Any]:
    fleet = context.fleet
    errors = check_settings(fleet)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise InventoryErrors(errors)
    settings = _settings(fleet)
    artifact = artifact_path(fleet)
    return {
        "app_artifact": str(artifact) if settings["artifact"] else "",
        "app_command": settings["command"].strip(),
        "app_environment": environment(fleet, context.secrets),
        "app_port": settings["port"],
        "app_health_path": settings["health_path"],
    }
