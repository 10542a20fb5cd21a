"""The ACME side of issuance, through the certbot project's `acme` library.

Every library or network failure leaves this module as a `CertError` with one line naming
what failed and what to do: `AcmeUnreachable` when the server cannot be reached,
`AcmeRefused` when it answered no.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests
from acme import challenges, client, errors, messages
from acme.crypto_util import make_csr
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwa import ES256, RS256, JWASignature
from josepy.jwk import JWK, JWKEC, JWKRSA

from clonefleet.certs.errors import AcmeRefused, AcmeUnreachable, CertError
from clonefleet.certs.keys import key_pem, load_key
from clonefleet.certs.settings import CertSettings
from clonefleet.errors import one_line

USER_AGENT = "clonefleet"
NETWORK_SECONDS = 30


class AccountUnknown(AcmeRefused):
    """The remembered account URL is gone at the server (deactivated, or a test CA restarted):
    the caller registers the key again."""


@contextmanager
def acme_errors(what: str, directory_url: str) -> Iterator[None]:
    """Turn the library's and the network's exceptions into one-line `CertError`s."""
    try:
        yield
    except requests.exceptions.SSLError as error:
        raise AcmeUnreachable(
            f"{what}: the ACME server {directory_url} presented a certificate this "
            f"controller does not trust ({_short(error)}); for a private or test ACME server "
            "set [services.certs] ca_bundle to its CA's PEM file") from None
    except requests.exceptions.RequestException as error:
        raise AcmeUnreachable(
            f"{what}: ACME server {directory_url} unreachable ({type(error).__name__}); check "
            "[services.certs] directory_url and this controller's network") from None
    except errors.ValidationError as error:
        raise AcmeRefused(f"{what}: {one_line(error, 400)}; check that every node's DNS server "
                          "answers for the fleet's domain from the internet") from None
    except errors.TimeoutError:
        raise AcmeRefused(f"{what}: the ACME server did not finish in time; run the command "
                          "again later") from None
    except messages.Error as error:
        if error.code == "accountDoesNotExist":
            raise AccountUnknown(f"{what}: the ACME server does not know the stored account "
                                 f"({one_line(error, 400)})") from None
        raise AcmeRefused(f"{what}: the ACME server refused: {one_line(error, 400)}") from None
    except errors.Error as error:
        raise AcmeRefused(f"{what}: {one_line(error, 400) or type(error).__name__}") from None


def _short(error: BaseException) -> str:
    text = str(error)
    return text.split("(Caused by ")[-1].rstrip(")")[:200] if text else type(error).__name__


def account_jwk(pem: str) -> tuple[JWK, JWASignature]:
    """The account key as the library wants it, and its signature algorithm."""
    key = load_key(pem)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return JWKEC(key=key), ES256
    return JWKRSA(key=key), RS256


def connect(settings: CertSettings, account_key: str) -> client.ClientV2:
    """A client bound to the directory, signing with the account key (not yet registered)."""
    key, algorithm = account_jwk(account_key)
    network = client.ClientNetwork(key, alg=algorithm, user_agent=USER_AGENT,
                                   timeout=NETWORK_SECONDS)
    if settings.ca_bundle is not None:
        # The library hands `verify_ssl` to requests as `verify`, which takes a CA file path.
        network.verify_ssl = str(settings.ca_bundle)  # type: ignore[assignment]
    with acme_errors("read the ACME directory", settings.directory_url):
        directory = client.ClientV2.get_directory(settings.directory_url, network)
    return client.ClientV2(directory, network)


def use_account(acme: client.ClientV2, settings: CertSettings, known_uri: str | None) -> str:
    """Sign requests as the account: the one registered before (`known_uri`), else register
    the key now (agreeing to the CA's terms) or find the account the key already has. Returns
    the account's URL, to remember."""
    if known_uri:
        acme.net.account = messages.RegistrationResource(uri=known_uri,
                                                         body=messages.Registration())
        return known_uri
    # A new-account request is signed with the key itself, not an account URL.
    acme.net.account = None
    contact = (f"mailto:{settings.email}",) if settings.email else ()
    registration = messages.NewRegistration(contact=contact, terms_of_service_agreed=True)
    with acme_errors("register the ACME account", settings.directory_url):
        try:
            account = acme.new_account(registration)
        except errors.ConflictError as existing:
            # The key is registered already (state lost, or another controller): use it.
            uri = str(existing.location)
            acme.net.account = messages.RegistrationResource(uri=uri,
                                                             body=messages.Registration())
            return uri
    return str(account.uri)


@dataclass(frozen=True)
class Pending:
    """One authorization still to prove: its name and the DNS-01 challenge to answer."""

    name: str  # the identifier, "*." restored for a wildcard
    challenge: messages.ChallengeBody
    validation: str  # the TXT record's value


def order(acme: client.ClientV2, settings: CertSettings, names: tuple[str, ...],
          certificate_key: Any) -> tuple[messages.OrderResource, list[Pending]]:
    """Open an order for `names` with a CSR of `certificate_key`; return it and the DNS-01
    challenges of its authorizations that are not valid yet."""
    csr = make_csr(key_pem(certificate_key).encode(), list(names))
    with acme_errors("open the certificate order", settings.directory_url):
        opened = acme.new_order(csr)
    pending = []
    for authorization in opened.authorizations:
        body = authorization.body
        if body.status == messages.STATUS_VALID:
            continue
        name = ("*." if body.wildcard else "") + str(body.identifier.value)
        dns01 = [item for item in body.challenges if isinstance(item.chall, challenges.DNS01)]
        if not dns01:
            raise AcmeRefused(f"the ACME server offers no DNS-01 challenge for {name}; use an "
                              "ACME server that supports DNS-01")
        chall = dns01[0].chall
        assert isinstance(chall, challenges.DNS01)
        pending.append(Pending(name, dns01[0], chall.validation(acme.net.key)))
    return opened, pending


def answer_and_finish(acme: client.ClientV2, settings: CertSettings,
                      opened: messages.OrderResource, pending: list[Pending], seconds: float,
                      validated: Callable[[], None]) -> str:
    """Tell the server the challenges are ready, wait for their validation (`validated()` is
    called then, while the records are still up), finalize and return the PEM chain."""
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=seconds)
    with acme_errors("validate the challenges", settings.directory_url):
        for item in pending:
            chall = item.challenge.chall
            assert isinstance(chall, challenges.DNS01)
            acme.answer_challenge(item.challenge, chall.response(acme.net.key))
        ready = acme.poll_authorizations(opened, deadline)
    validated()
    with acme_errors("finalize the order", settings.directory_url):
        done = acme.finalize_order(ready, deadline)
    if not done.fullchain_pem:
        raise CertError("the ACME server finished the order without a certificate; run "
                        "the command again")
    return str(done.fullchain_pem)
