"""`clonefleet cert issue|renew|show`: the fleet's TLS certificate (ACME DNS-01).

Exit codes: 0 done (a certificate was obtained, or the stored one is still good); 2 bad
input (fleet file, `[services.certs]`); 40 another certificate error (e.g. a run already in
progress); 41 the ACME server unreachable or not trusted; 42 a node's DNS server could not
take the challenge records (no DNS endpoint, refused, unreachable); 43 a node's DNS server
did not answer a challenge record in time; 44 the ACME server refused (validation failed,
invalid order, rate limit); 45 no certificate stored (`show`); 46 the certificate was stored
but challenge records remain on some DNS server.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

import click

from clonefleet.cli import Context, pass_context

RENEW_HELP = ("Obtain a new certificate only when needed: none stored, a fleet host name "
              "missing from it, or fewer than [services.certs] renew_before_days left. "
              "The command the daily timer runs.")


def _progress() -> Any:
    """Progress lines on stderr (stdout stays one JSON document with --json)."""
    started = time.monotonic()

    def line(text: str) -> None:
        click.echo(f"[{time.monotonic() - started:5.1f}s] {text}", err=True)

    return line


def _info(info: Any, now: datetime.datetime) -> dict[str, Any]:
    return {"names": list(info.names), "issuer": info.issuer,
            "not_before": info.not_before.isoformat(), "not_after": info.not_after.isoformat(),
            "days_left": round(info.days_left(now), 1), "serial": info.serial,
            "key_type": info.key_type}


def _run(ctx: Context, *, renewing: bool, force: bool) -> None:
    from clonefleet.certs import ensure_certificate
    from clonefleet.secrets import open_secrets

    result = ensure_certificate(ctx.fleet, ctx.store, open_secrets(ctx.state_dir),
                                renewing=renewing, force=force, log=_progress())
    now = datetime.datetime.now(datetime.UTC)
    data = {"issued": result.issued, "reason": result.reason, "names": list(result.names),
            "certificate": _info(result.certificate, now) if result.certificate else None}
    if result.issued:
        assert result.certificate is not None
        text = (f"issued ({result.reason}): {len(result.names)} names, valid until "
                f"{result.certificate.not_after:%Y-%m-%d %H:%M} UTC")
    else:
        text = f"nothing to do: the stored certificate is {result.reason}"
    ctx.emit(data, text)


@click.group()
def cert() -> None:
    """The fleet's TLS certificate: ACME DNS-01 through every node's DNS server.

    One certificate for every fleet host name (routed names, <node>.<domain>,
    [services.certs] extra_names), proven with DNS-01 records published on every
    node's DNS server, stored encrypted for the deploys (fleet secrets tls_chain
    and tls_key).

    \b
    Exit codes: 0 done or nothing needed; 2 bad fleet file or [services.certs];
    40 other certificate error; 41 ACME server unreachable or untrusted;
    42 a node's DNS server could not take the challenge records; 43 a node's DNS
    server did not answer a challenge record in time; 44 the ACME server refused;
    45 no certificate stored; 46 stored, but challenge records were left on a server.
    """


@cert.command()
@click.option("--force", is_flag=True,
              help="Obtain a new certificate even if the stored one still fits.")
@pass_context
def issue(ctx: Context, force: bool) -> None:
    """Obtain the fleet's certificate unless the stored one still covers every host name
    (and has not expired); --force always obtains a new one."""
    _run(ctx, renewing=False, force=force)


@cert.command(help=RENEW_HELP)
@pass_context
def renew(ctx: Context) -> None:
    _run(ctx, renewing=True, force=False)


@cert.command()
@pass_context
def show(ctx: Context) -> None:
    """Show the stored certificate: names, issuer, expiry and days left, and whether it
    covers every current fleet host name."""
    from clonefleet.certs import NoCertificate, cert_settings, certificate_names, stored
    from clonefleet.secrets import open_secrets

    info = stored(open_secrets(ctx.state_dir))
    if info is None:
        raise NoCertificate("no certificate stored for this fleet; run `clonefleet cert "
                            "issue`")
    now = datetime.datetime.now(datetime.UTC)
    missing = sorted(set(certificate_names(ctx.fleet, cert_settings(ctx.fleet)))
                     - set(info.names))
    data = _info(info, now) | {"missing_names": missing}
    lines = [f"issuer:    {info.issuer}",
             f"not after: {info.not_after:%Y-%m-%d %H:%M} UTC "
             f"({info.days_left(now):.0f} days left)",
             f"key:       {info.key_type or 'other'}",
             "names:     " + ", ".join(info.names)]
    if missing:
        lines.append("missing:   " + ", ".join(missing) + " (run `clonefleet cert renew`)")
    ctx.emit(data, "\n".join(lines))


def register(group: click.Group) -> None:
    group.add_command(cert)
