"""`[services.certs]` as one checked value: every problem reported at once, each naming the
key and the fix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clonefleet.errors import InventoryError, InventoryErrors
from clonefleet.inventory import Fleet
from clonefleet.services import certs as service

HOSTNAME_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"


@dataclass(frozen=True)
class CertSettings:
    directory_url: str
    email: str
    ca_bundle: Path | None  # None: the system's trusted CAs
    renew_before_days: int
    key_type: str
    extra_names: tuple[str, ...]
    dns_wait_seconds: int


def cert_settings(fleet: Fleet) -> CertSettings:
    """Given the loaded fleet, return its certificate settings; raise `InventoryError(s)` for
    values the loader's type checks let through (URL shape, missing CA file, bad names)."""
    raw: dict[str, Any] = {key: setting.default for key, setting in service.SETTINGS.items()}
    raw.update(fleet.services.get("certs", {}))
    path = str(fleet.path)
    problems: list[InventoryError] = []

    def fail(key: str, problem: str, fix: str) -> None:
        problems.append(InventoryError(path, f"services.certs.{key}", problem, fix))

    directory_url = str(raw["directory_url"])
    if not directory_url.startswith(("https://", "http://")):
        fail("directory_url", f"{directory_url!r} is not an http(s) URL",
             f'use the ACME server\'s directory URL, e.g. "{service.LETS_ENCRYPT}"')
    email = str(raw["email"])
    if email and ("@" not in email or " " in email or email.startswith("mailto:")):
        fail("email", f"{email!r} is not an e-mail address", 'write e.g. "ops@example.com"')
    ca_bundle = None
    if raw["ca_bundle"]:
        # Relative to the fleet file, like every other path in it.
        ca_bundle = (fleet.path.parent / str(raw["ca_bundle"])).resolve()
        if not ca_bundle.is_file():
            fail("ca_bundle", f"no file {ca_bundle}",
                 "point it at a PEM file of the ACME server's CA, or remove it")
    renew_before_days = int(raw["renew_before_days"])
    if renew_before_days < 0:
        fail("renew_before_days", f"{renew_before_days} is negative", "use 0 or more days")
    dns_wait_seconds = int(raw["dns_wait_seconds"])
    if dns_wait_seconds <= 0:
        fail("dns_wait_seconds", f"{dns_wait_seconds} is not positive", "use 1 or more seconds")
    extra: list[str] = []
    for index, name in enumerate(raw["extra_names"] or ()):
        problem = extra_name_problem(name, fleet.domain)
        if problem:
            fail(f"extra_names[{index}]", problem,
                 f"use a host name under {fleet.domain} (or *.{fleet.domain})")
        else:
            extra.append(str(name).lower().rstrip("."))
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise InventoryErrors(problems)
    return CertSettings(directory_url, email, ca_bundle, renew_before_days,
                        str(raw["key_type"]), tuple(extra), dns_wait_seconds)


def extra_name_problem(name: Any, domain: str) -> str:
    """Why `name` cannot be on the certificate, or "" when it can: it must be a host name
    (optionally `*.` for a wildcard) at or under the fleet's domain, since only names in the
    fleet's zone can have their challenges answered by the fleet's DNS servers."""
    import re

    if not isinstance(name, str):
        return f"expected a string, got {type(name).__name__}"
    host = name.lower().rstrip(".")
    bare = host.removeprefix("*.")
    if not re.fullmatch(rf"{HOSTNAME_LABEL}(\.{HOSTNAME_LABEL})*", bare) or len(bare) > 253:
        return f"{name!r} is not a host name"
    zone = domain.lower().rstrip(".")
    if bare != zone and not bare.endswith("." + zone):
        return (f"{name!r} is outside the fleet's domain {zone} (its challenge could not be "
                "answered by the fleet's DNS servers)")
    return ""
