"""The fleet certificate: ACME's when issued, else one self-signed certificate, kept."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from clonefleet.errors import KeystoreError
from clonefleet.keystore import Keystore
from clonefleet.secrets import FLEET, SecretStore, open_secrets
from clonefleet.services.fleet_certificate import (
    ACME_CHAIN,
    ACME_KEY,
    SELF_CHAIN,
    SELF_KEY,
    _issue,
    _new_key,
    fleet_certificate,
)

pytestmark = pytest.mark.unit
NAMES = ["edge.fleet.example.com", "fsn-1.fleet.example.com"]


def _store(tmp_path: Path) -> SecretStore:
    return open_secrets(tmp_path / "state", Keystore(tmp_path / "state" / "keystore",
                                                     tmp_path / "age.key"))


def _leaf(chain: str) -> x509.Certificate:
    return x509.load_pem_x509_certificates(chain.encode())[0]


def _sans(chain: str) -> list[str]:
    return sorted(_leaf(chain).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))


def test_without_acme_a_self_signed_p256_certificate_for_the_names_is_made_and_kept(
        tmp_path: Path) -> None:
    store = _store(tmp_path)
    first = fleet_certificate(store, NAMES)

    assert first.self_signed
    leaf = _leaf(first.chain)
    assert _sans(first.chain) == NAMES
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert datetime.timedelta(days=89) < lifetime <= datetime.timedelta(days=90, minutes=5)
    assert store.get(FLEET, SELF_CHAIN) == first.chain and store.get(FLEET, SELF_KEY) == first.key
    assert first.pem.startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY-----" in first.pem and "PRIVATE" not in repr(first)

    again = fleet_certificate(_store(tmp_path), list(reversed(NAMES)))
    assert (again.chain, again.key) == (first.chain, first.key)  # not regenerated


def test_the_self_signed_certificate_is_replaced_for_new_names_or_near_expiry(
        tmp_path: Path) -> None:
    store = _store(tmp_path)
    first = fleet_certificate(store, NAMES)

    more = fleet_certificate(store, [*NAMES, "ash-1.fleet.example.com"])
    assert more.chain != first.chain and more.key == first.key
    assert "ash-1.fleet.example.com" in _sans(more.chain)

    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=70)
    renewed = fleet_certificate(store, [*NAMES, "ash-1.fleet.example.com"], now=lambda: later)
    assert renewed.chain != more.chain
    assert _leaf(renewed.chain).not_valid_after_utc > later + datetime.timedelta(days=80)


def test_an_acme_certificate_in_the_store_wins_and_a_mismatched_one_is_an_error(
        tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    store = _store(tmp_path)
    key_pem = _new_key()
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    chain = _issue(key, NAMES, datetime.datetime.now(datetime.UTC))
    store.put(FLEET, ACME_CHAIN, chain)
    store.put(FLEET, ACME_KEY, key_pem)

    chosen = fleet_certificate(store, NAMES)
    assert not chosen.self_signed and (chosen.chain, chosen.key) == (chain, key_pem)
    assert not store.has(FLEET, SELF_CHAIN)  # nothing self-signed was made

    store.put(FLEET, ACME_KEY, _new_key())
    with pytest.raises(KeystoreError, match="not a PEM chain with the leaf of its private key"):
        fleet_certificate(store, NAMES)
