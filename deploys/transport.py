"""HAProxy on every node: TLS for the fleet's hostnames, HTTP/2, forwarding to the local app.

Usable from clonefleet and from the plain CLI (`pyinfra inventory/lab.py deploys/node.py`).
HTTPS on 443 (TLS 1.2+, Mozilla's intermediate ciphers, ALPN h2 and http/1.1, HSTS), HTTP
on 80 redirecting to HTTPS, the app on loopback as the only backend, and a health URL
(`transport_health_uri`) answered by HAProxy itself: 200 while the app passes its health
checks, 503 otherwise. HAProxy's metrics (`/metrics`) and status page (`/stats`) are served
on loopback only.

The configuration is checked with `haproxy -c` on the node before it replaces the live one
(a bad configuration never goes live), and HAProxy is reloaded, never restarted, when the
configuration or the certificate changed; the deploy then waits until HTTPS serves the
deployed certificate (a reload returns before HAProxy's new worker is up). With
`clonefleet_offline` (a root filesystem without a running systemd) files are written and the
unit enabled, nothing is started.

Host data (defaults in `DEFAULTS`):

+ transport_tls_pem: certificate chain and private key, one PEM (required; never shown)
+ transport_hostnames: the names the certificate covers (for the record in the config)
+ transport_hsts_max_age: Strict-Transport-Security max-age (0: no header)
+ transport_backend_port / transport_backend_health_path: the app on 127.0.0.1
+ transport_listen_addresses: addresses for 80/443 ("::" is IPv6 and IPv4)
+ transport_http_port / transport_https_port / transport_stats_port (0: no stats)
+ transport_health_uri, transport_config_path, transport_cert_path, transport_chroot,
  transport_stats_socket, transport_user: paths and names, Debian's by default
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

import jinja2
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import apt, files, server, systemd

from deploys._files import checked_file, secret_file
from deploys._paths import template
from deploys._systemd import enabled_offline, offline

HEALTH_URI = "/.well-known/clonefleet/health"
DEFAULTS: dict[str, Any] = {
    "transport_tls_pem": "",
    "transport_hostnames": [],
    "transport_hsts_max_age": 63072000,
    "transport_backend_port": 8080,
    "transport_backend_health_path": "/healthz",
    "transport_listen_addresses": ["::"],
    "transport_http_port": 80,
    "transport_https_port": 443,
    "transport_stats_port": 8404,
    "transport_health_uri": HEALTH_URI,
    "transport_config_path": "/etc/haproxy/haproxy.cfg",
    "transport_cert_path": "/etc/haproxy/certs/fleet.pem",
    "transport_chroot": "/var/lib/haproxy",
    "transport_stats_socket": "/run/haproxy/admin.sock",
    "transport_user": "haproxy",
}
CHECK = "haproxy -c -f {path}"


def _bind(address: str, port: int) -> str:
    if address == "::":
        return f":::{port} v4v6"  # one socket for IPv6 and IPv4
    return f"{address}:{port}"  # HAProxy reads the port after the last colon


def haproxy_config(data: Mapping[str, Any]) -> str:
    """The HAProxy configuration for host data `data` (missing keys take `DEFAULTS`)."""
    values = {**DEFAULTS, **data}
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True,
                                     lstrip_blocks=True, keep_trailing_newline=True,
                                     autoescape=False)  # a config file, not HTML
    with open(template("transport/haproxy.cfg.j2")) as source:
        config = environment.from_string(source.read())
    addresses = values["transport_listen_addresses"]
    return config.render(
        hostnames=list(values["transport_hostnames"]),
        http_binds=[_bind(a, values["transport_http_port"]) for a in addresses],
        https_binds=[_bind(a, values["transport_https_port"]) for a in addresses],
        cert_path=values["transport_cert_path"],
        health_uri=values["transport_health_uri"],
        health_path=values["transport_backend_health_path"],
        backend_port=values["transport_backend_port"],
        hsts_max_age=values["transport_hsts_max_age"],
        stats_port=values["transport_stats_port"],
        chroot=values["transport_chroot"],
        stats_socket=values["transport_stats_socket"],
        user=values["transport_user"],
    )


# How long a reloaded HAProxy may take to serve the new certificate (a reload only signals
# HAProxy: its new worker loads the configuration after `systemctl reload` returned).
SERVED_WAIT_SECONDS = 120


def served_certificate_command(data: Mapping[str, Any],
                               timeout: float = SERVED_WAIT_SECONDS) -> str:
    """Shell: wait until HTTPS on this node serves the certificate in the certificate file
    (same SHA-256 fingerprint); fail with a message after `timeout` seconds."""
    values = {**DEFAULTS, **data}
    address = str(values["transport_listen_addresses"][0])
    if address in ("::", "0.0.0.0"):
        address = "127.0.0.1"
    elif ":" in address:
        address = f"[{address}]"
    target = shlex.quote(f"{address}:{int(values['transport_https_port'])}")
    cert = shlex.quote(str(values["transport_cert_path"]))
    fingerprint = "openssl x509 -noout -fingerprint -sha256"
    tries = max(1, int(timeout / 0.5))
    return (f"want=$({fingerprint} -in {cert}) || exit 1; "
            f"for i in $(seq {tries}); do "
            f"got=$(openssl s_client -connect {target} </dev/null 2>/dev/null | {fingerprint} "
            "2>/dev/null); "
            '[ "$got" = "$want" ] && exit 0; sleep 0.5; done; '
            f"echo \"HAProxy on {target} still serves another certificate than {cert} "
            f"{timeout:.0f} s after its reload\" >&2; exit 1")


@deploy("clonefleet transport", data_defaults=DEFAULTS)
def transport() -> None:
    data = {key: host.data.get(key) for key in DEFAULTS}
    if not data["transport_tls_pem"]:
        raise DeployError(f"{host.name}: no transport_tls_pem host data (the fleet "
                          "certificate); deploy through clonefleet or its inventory module")
    apt.packages(name="HAProxy", packages=["haproxy"])

    cert_path = data["transport_cert_path"]
    files.directory(name="HAProxy certificate folder", path=str(PurePosixPath(cert_path).parent),
                    user="root", group="root", mode="700")
    certificate = secret_file(name="Fleet TLS certificate (content hidden)",
                              content=data["transport_tls_pem"], dest=cert_path, mode="600")
    config = checked_file(name="HAProxy configuration (checked with haproxy -c)",
                          content=haproxy_config(data), dest=data["transport_config_path"],
                          check=CHECK)
    enabled_offline(name="HAProxy enabled at boot", unit="haproxy.service")
    if offline():
        return
    systemd.service(name="HAProxy running", service="haproxy", running=True)
    changed = lambda: certificate.did_change() or config.did_change()  # noqa: E731
    systemd.service(name="HAProxy reload", service="haproxy", reloaded=True, _if=changed)
    # A deploy that returned serves what it deployed: clients and the next step (a test, a
    # rollout's health check) see the new certificate, not the old worker's.
    server.shell(name="HAProxy serves the deployed certificate",
                 commands=[served_certificate_command(data)], _if=changed)
