"""Obtain the fleet's certificate through ACME DNS-01, answered by the fleet's own DNS servers.

Invariant: the challenge records are removed from every node's server once the attempt ends,
whether it succeeded or failed; the certificate and its key are stored only together, in the
age-encrypted `SecretStore`, and the key is never written anywhere in clear. One issuance
runs at a time per fleet (a state-store lock), so a timer's renewal and an operator's
`cert issue` cannot interleave their challenge records.
"""

from __future__ import annotations

import datetime
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

from clonefleet.certs import acme_client
from clonefleet.certs.challenge import (
    challenge_endpoints,
    publish_records,
    remove_records,
    wait_visible,
)
from clonefleet.certs.errors import CertError, ChallengeLeftOver
from clonefleet.certs.keys import key_pem, new_key
from clonefleet.certs.names import certificate_names, challenge_name
from clonefleet.certs.settings import CertSettings, cert_settings
from clonefleet.certs.stored import (
    ACCOUNT_FACT,
    ACCOUNT_KEY,
    CHAIN,
    ISSUED_FACT,
    KEY,
    CertInfo,
    describe,
    renewal_reason,
    stored,
)
from clonefleet.dnsmap.endpoints import Endpoints
from clonefleet.dnsmap.model import fqdn
from clonefleet.errors import StateError
from clonefleet.inventory import Fleet
from clonefleet.secrets import FLEET, SecretStore
from clonefleet.state import FLEET_FACTS, StateStore

LOCK = "cert-issue"
LOCK_SECONDS = 5.0
# Validation plus finalization at the ACME server; Let's Encrypt takes seconds.
ORDER_SECONDS = 180.0


@dataclass
class IssueResult:
    issued: bool
    reason: str  # why a certificate was obtained, or why none was needed
    names: tuple[str, ...]
    certificate: CertInfo | None
    leftover: dict[str, str] = field(default_factory=dict)  # node → removal error


def _account_key() -> str:
    return key_pem(new_key("ecdsa-p256"))


def account(store: StateStore, settings: CertSettings, uri: str) -> None:
    """Remember the account URL per ACME directory, so the account is registered once."""
    accounts = dict(store.get_fact(FLEET_FACTS, ACCOUNT_FACT) or {})
    if accounts.get(settings.directory_url) != uri:
        accounts[settings.directory_url] = uri
        store.set_fact(FLEET_FACTS, ACCOUNT_FACT, accounts)


def obtain(fleet: Fleet, store: StateStore, secrets: SecretStore, settings: CertSettings,
           names: tuple[str, ...], *, endpoints: Endpoints | None = None,
           log: Callable[[str], None] = lambda line: None,
           clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> tuple[CertInfo, dict[str, str]]:
    """Run one ACME order for `names` and store the result; return it and the nodes whose
    challenge records could not be removed (node → error)."""
    endpoints = challenge_endpoints(fleet, store) if endpoints is None else endpoints
    zone = fqdn(fleet.domain)
    account_key = secrets.get_or_create(FLEET, ACCOUNT_KEY, _account_key)
    log(f"contacting the ACME server {settings.directory_url}")
    acme = acme_client.connect(settings, account_key)
    known = (store.get_fact(FLEET_FACTS, ACCOUNT_FACT) or {}).get(settings.directory_url)
    account(store, settings, acme_client.use_account(acme, settings, known))
    certificate_key = new_key(settings.key_type)
    log(f"ordering a certificate for {len(names)} names")
    try:
        opened, pending = acme_client.order(acme, settings, names, certificate_key)
    except acme_client.AccountUnknown:
        log("the ACME server no longer knows the stored account; registering it again")
        account(store, settings, acme_client.use_account(acme, settings, None))
        opened, pending = acme_client.order(acme, settings, names, certificate_key)
    records: dict[str, list[str]] = defaultdict(list)
    for item in pending:
        records[challenge_name(item.name)].append(item.validation)
    frozen = {name: tuple(values) for name, values in records.items()}
    leftover: dict[str, str] = {}
    cleaned = False
    try:
        if frozen:
            log(f"publishing {len(frozen)} challenge records on {len(endpoints)} DNS servers")
            publish_records(endpoints, zone, frozen)
            log("waiting until every DNS server answers them")
            wait_visible(endpoints, frozen, settings.dns_wait_seconds, clock=clock,
                         sleep=sleep)
        log("asking the ACME server to validate")
        chain = acme_client.answer_and_finish(
            acme, settings, opened, pending, ORDER_SECONDS,
            lambda: log("challenges validated; finalizing the order"))
    except CertError as error:
        cleaned, leftover = True, remove_records(endpoints, zone, frozen)
        if leftover:
            raise type(error)(f"{error}; challenge records also remain on "
                              f"{', '.join(sorted(leftover))}") from None
        raise
    finally:
        # Also on ^C or a bug: the records never outlive the attempt.
        if not cleaned:
            leftover = remove_records(endpoints, zone, frozen)
    info = describe(chain)
    # Key first: a chain without its key is never readable as a pair (`stored` needs both),
    # and a crash between the two leaves the old chain with a key that does not match it
    # only until the next run, which replaces both.
    secrets.put(FLEET, KEY, key_pem(certificate_key))
    secrets.put(FLEET, CHAIN, chain)
    store.set_fact(FLEET_FACTS, ISSUED_FACT, {
        "directory_url": settings.directory_url, "names": list(info.names),
        "not_after": info.not_after.isoformat(), "serial": info.serial, "at": time.time()})
    log(f"stored the certificate, valid until {info.not_after:%Y-%m-%d %H:%M} UTC")
    return info, leftover


def ensure_certificate(fleet: Fleet, store: StateStore, secrets: SecretStore, *,
                       renewing: bool, force: bool = False,
                       endpoints: Endpoints | None = None,
                       log: Callable[[str], None] = lambda line: None,
                       now: datetime.datetime | None = None,
                       lock_seconds: float = LOCK_SECONDS,
                       clock: Callable[[], float] = time.monotonic,
                       sleep: Callable[[float], None] = time.sleep) -> IssueResult:
    """Given the fleet, obtain a certificate when one is needed and store it.

    Needed: `force`; no certificate; one missing a current name, expired, of another key type
    or from another ACME directory; with `renewing`, also one expiring within
    `renew_before_days`. Raises `ChallengeLeftOver` (after storing the certificate) when
    challenge records could not be removed from some server.
    """
    settings = cert_settings(fleet)
    names = certificate_names(fleet, settings)
    now = now or datetime.datetime.now(datetime.UTC)
    with ExitStack() as held:
        try:
            held.enter_context(store.lock(LOCK, timeout=lock_seconds))
        except StateError:
            raise CertError("another certificate run for this fleet is in progress; wait for "
                            "it and run the command again") from None
        current = stored(secrets)
        issued = store.get_fact(FLEET_FACTS, ISSUED_FACT) or {}
        reason = "forced" if force else renewal_reason(
            current, names, settings.key_type,
            settings.renew_before_days if renewing else None, now,
            issued.get("directory_url"), settings.directory_url)
        if not reason:
            assert current is not None
            return IssueResult(False, f"valid until {current.not_after:%Y-%m-%d} for every "
                               "name", names, current)
        log(f"obtaining a certificate: {reason}")
        info, leftover = obtain(fleet, store, secrets, settings, names, endpoints=endpoints,
                                log=log, clock=clock, sleep=sleep)
    if leftover:
        nodes = ", ".join(sorted(leftover))
        raise ChallengeLeftOver(f"certificate stored, but challenge records remain on {nodes} "
                                f"({'; '.join(leftover.values())}); they are replaced or "
                                "removed by the next issuance")
    return IssueResult(True, reason, names, info, leftover)
