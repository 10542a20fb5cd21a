"""The operator's application on every node: a hardened systemd service on loopback.

Usable from clonefleet and from the plain CLI. The artifact (a file on the controller; by
default the demo app, `templates/app/demo_app.py`) is copied to /opt/clonefleet-app/, the
environment (secrets included) to /etc/clonefleet-app/environment (mode 600, never shown),
and `clonefleet-app.service` runs the command as a dynamic user with systemd's sandboxing,
listening on 127.0.0.1 only: HAProxy (`deploys/transport.py`) is its only client. The app is
restarted when its artifact, environment or unit changed. With `clonefleet_offline` files
are written and the unit enabled, nothing is started.

The app gets these variables besides its own: HOST (127.0.0.1), PORT, CLONEFLEET_NODE,
CLONEFLEET_REGION, CLONEFLEET_HEALTH_PATH.

Host data (defaults in `DEFAULTS`):

+ app_artifact: path of the app file on the controller ("": the demo app)
+ app_command: the command line ("": the demo app's; required with an artifact)
+ app_environment: {NAME: value} (secret values included, from clonefleet's keystore)
+ app_port: the loopback port it listens on
+ app_health_path: the URL path answering 200 while the app is healthy
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import apt, files, systemd

from deploys._files import secret_file
from deploys._paths import template
from deploys._systemd import enabled_offline, offline

DEFAULTS: dict[str, Any] = {
    "app_artifact": "",
    "app_command": "",
    "app_environment": {},
    "app_port": 8080,
    "app_health_path": "/healthz",
}
HOME = "/opt/clonefleet-app"
UNIT = "clonefleet-app.service"
ENVIRONMENT_FILE = "/etc/clonefleet-app/environment"
DEMO_COMMAND = f"/usr/bin/python3 {HOME}/demo_app.py"


def environment_file(values: Mapping[str, str]) -> str:
    """A systemd EnvironmentFile: one NAME="value" a line, taken literally by systemd."""
    lines = []
    for name, value in sorted(values.items()):
        if "\n" in value:
            raise DeployError(f"app environment variable {name}: a value cannot span lines")
        escaped = "".join("\\" + c if c in '\\"$`' else c for c in value)
        lines.append(f'{name}="{escaped}"\n')
    return "".join(lines)


def app_environment(data: Mapping[str, Any], node: str, region: str) -> dict[str, str]:
    """The operator's variables plus the ones the deploy sets itself (these win)."""
    return {
        **{name: str(value) for name, value in data["app_environment"].items()},
        "HOST": "127.0.0.1",
        "PORT": str(data["app_port"]),
        "CLONEFLEET_NODE": node,
        "CLONEFLEET_REGION": region,
        "CLONEFLEET_HEALTH_PATH": data["app_health_path"],
    }


@deploy("clonefleet app", data_defaults=DEFAULTS)
def app() -> None:
    data = {key: host.data.get(key) for key in DEFAULTS}
    artifact = data["app_artifact"] or template("app/demo_app.py")
    command = data["app_command"] or ("" if data["app_artifact"] else DEMO_COMMAND)
    if not command:
        raise DeployError(f"{host.name}: app_artifact is set without app_command; set the "
                          "command that runs it")
    node = host.data.get("clonefleet_hostname") or host.name
    region = host.data.get("clonefleet_region") or ""

    # python3 runs the demo app; the operator's app brings what it needs in its artifact.
    apt.packages(name="App runtime (python3)", packages=["python3"])
    files.directory(name="App folder", path=HOME, user="root", group="root", mode="755")
    code = files.put(name="App artifact", src=artifact, dest=f"{HOME}/{Path(artifact).name}",
                     user="root", group="root", mode="755")
    files.directory(name="App environment folder", path=str(Path(ENVIRONMENT_FILE).parent),
                    user="root", group="root", mode="700")
    environment = secret_file(name="App environment (content hidden)",
                              content=environment_file(app_environment(data, node, region)),
                              dest=ENVIRONMENT_FILE, mode="600")
    unit = files.template(name="App systemd unit", src=template("app/clonefleet-app.service.j2"),
                          dest=f"/etc/systemd/system/{UNIT}", mode="644", command=command)
    enabled_offline(name="App enabled at boot", unit=UNIT)
    if offline():
        return
    systemd.daemon_reload(name="systemd reload (app unit)", _if=unit.did_change)
    systemd.service(name="App restarted (artifact, environment or unit changed)", service=UNIT,
                    running=True, restarted=True,
                    _if=lambda: code.did_change() or environment.did_change()
                    or unit.did_change())
    systemd.service(name="App running", service=UNIT, running=True)
