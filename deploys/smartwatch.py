"""Install the smartwatch agent on a node: code, config, drain token, systemd timers.

Usable from clonefleet and from the plain CLI (`pyinfra inventory/lab.py deploys/smartwatch.py`
runs it with the defaults below). The agent runs on Debian's python3 with Debian's `apprise`,
`python3-chardet` and `python3-humanfriendly`; pySMART (not packaged by Debian) and the agent
itself are sent from the controller as one archive into /opt/smartwatch/lib (a symlink to the
unpacked release, swapped in one rename; sent only when the node's tree differs, see
`deploys._archive`), so the node needs nothing beyond the Debian mirror (or the image). A
second run reports no changes.

Host data (defaults in `data_defaults`):

+ smartwatch_node: the node's name as the control plane knows it (default: the host's name)
+ smartwatch_alert_urls: apprise URLs, e.g. ["mailtos://...", "ntfys://..."]
+ smartwatch_reminder_hours: hours between reminders of a persisting finding
+ smartwatch_drain_url: the control plane's `clonefleet serve` URL (empty: never drain)
+ smartwatch_drain_token: the node's drain token from `clonefleet token issue NODE`; written
  only when given, so later deploys keep the token already on the node (`clonefleet deploy`
  gives one to a node that never received one, issued only when this deploy reads it)
+ smartwatch_config_dir: the folder of the config and the token file (/etc/smartwatch)
+ smartwatch_drain_ca_file: CA bundle on the node for an HTTPS drain URL
+ smartwatch_metrics_file: Prometheus textfile (empty: none)
+ smartwatch_check_calendar / smartwatch_flush_calendar: systemd OnCalendar of the timers
+ smartwatch_selftests: start short (daily 02h) and long (Saturday 03h) self-tests
+ smartwatch_extra_config: TOML appended to the config (e.g. [policy] overrides)
+ clonefleet_offline: a root filesystem without running systemd (see `deploys.base`)

**Examples:**

    add_deploy(state, smartwatch, smartwatch_drain_url="http://10.66.0.1:8441",
               smartwatch_drain_token=issue_token(fleet, store, "fsn-1"))
"""

from __future__ import annotations

from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files

from deploys._archive import packages_folder
from deploys._paths import template
from deploys._systemd import daemon_reload
from deploys._systemd import unit as systemd_unit

# apprise brings python3-requests, -yaml and -markdown with it.
PACKAGES = ["smartmontools", "python3", "apprise", "python3-chardet", "python3-humanfriendly"]
UNITS = ("smartwatch.service", "smartwatch.timer", "smartwatch-flush.service",
         "smartwatch-flush.timer")
# Copied from the controller into /opt/smartwatch/lib as one archive (deploys/_archive.py).
CODE = ("smartwatch", "pySMART")


def _package_dir(name: str) -> str:
    if name == "smartwatch":
        return str(Path(__file__).resolve().parent.parent / "smartwatch")
    import pySMART

    return str(Path(pySMART.__file__).resolve().parent)


def drain_token() -> None:
    """Write the node's drain token, when one is given, to `<config dir>/drain_token` (0600).

    The operation's name is what `clonefleet deploy` checks to record the token as delivered
    (`clonefleet.services.smartwatch.TOKEN_OPERATION`): keep the two equal.
    """
    token = host.data.get("smartwatch_drain_token")
    if token:
        config_dir = host.data.get("smartwatch_config_dir") or "/etc/smartwatch"
        files.put(name="smartwatch drain token", src=StringIO(str(token).strip() + "\n"),
                  dest=f"{config_dir}/drain_token", mode="600")


@deploy("smartwatch agent", data_defaults={
    "smartwatch_node": "",
    "smartwatch_alert_urls": [],
    "smartwatch_reminder_hours": 24,
    "smartwatch_drain_url": "",
    "smartwatch_drain_token": "",
    "smartwatch_config_dir": "/etc/smartwatch",
    "smartwatch_drain_ca_file": "",
    "smartwatch_metrics_file": "/var/lib/prometheus/node-exporter/smartwatch.prom",
    "smartwatch_check_calendar": "hourly",
    "smartwatch_flush_calendar": "*:0/5",
    "smartwatch_selftests": True,
    "smartwatch_extra_config": "",
})
def smartwatch() -> None:
    apt.packages(name="smartwatch needs (Debian packages)", packages=PACKAGES)

    files.directory(name="smartwatch code folder", path="/opt/smartwatch", mode="755")
    packages_folder(name="smartwatch code", dest="/opt/smartwatch/lib",
                    sources=[(package, _package_dir(package)) for package in CODE])
    files.put(name="smartwatch command", src=template("smartwatch/smartwatch.sh"),
              dest="/usr/local/bin/smartwatch", mode="755")

    config_dir = host.data.smartwatch_config_dir
    files.directory(name="smartwatch config folder", path=config_dir, mode="700")
    files.directory(name="smartwatch state folder", path="/var/lib/smartwatch", mode="700")
    metrics_file = host.data.smartwatch_metrics_file
    if metrics_file:
        files.directory(name="Prometheus textfile folder", path=str(Path(metrics_file).parent),
                        mode="755")
    files.template(
        name="smartwatch config", src=template("smartwatch/smartwatch.toml.j2"),
        dest=f"{config_dir}/smartwatch.toml", mode="600",
        token_file=f"{config_dir}/drain_token",
        node=host.data.smartwatch_node or host.name,
        metrics_file=metrics_file,
        alert_urls=list(host.data.smartwatch_alert_urls),
        reminder_hours=host.data.smartwatch_reminder_hours,
        drain_url=host.data.smartwatch_drain_url,
        drain_ca_file=host.data.smartwatch_drain_ca_file,
        selftests=bool(host.data.smartwatch_selftests),
        extra_config=host.data.smartwatch_extra_config,
    )
    drain_token()

    changed = []
    for unit in UNITS:
        changed.append(files.template(
            name=f"systemd unit {unit}", src=template(f"smartwatch/{unit}.j2"),
            dest=f"/etc/systemd/system/{unit}", mode="644",
            check_calendar=host.data.smartwatch_check_calendar,
            flush_calendar=host.data.smartwatch_flush_calendar,
            timeout_seconds=1800,
        ))
    daemon_reload("systemd reload", lambda: any(op.did_change() for op in changed))
    for timer in ("smartwatch.timer", "smartwatch-flush.timer"):
        systemd_unit(f"{timer} enabled", timer)
