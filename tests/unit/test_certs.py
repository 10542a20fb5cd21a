"""The fleet certificate's names, settings checks and renewal rule, and the challenge wait's
deadline: no network."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from fleet_text import FSN, FleetNode, fleet_toml

from clonefleet.certs import (
    CertInfo,
    ChallengeNotVisible,
    cert_settings,
    certificate_names,
    challenge_name,
    renewal_reason,
)
from clonefleet.certs import challenge as challenge_module
from clonefleet.certs.challenge import wait_visible
from clonefleet.dnsmap import Endpoint, Endpoints
from clonefleet.dnsmap.errors import DnsError
from clonefleet.errors import InventoryError, InventoryErrors
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.services.certs import LETS_ENCRYPT

pytestmark = pytest.mark.unit

FLEET = fleet_toml("t", "fleet.example.com", [FSN],
                   [FleetNode("n1", "fsn", "SER-1"), FleetNode("n2", "fsn", "SER-2")],
                   routed=[{"name": "www"}, {"name": "api"}])

NOW = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)
NAMES = ("api.fleet.example.com", "n1.fleet.example.com", "n2.fleet.example.com",
         "www.fleet.example.com")


def _fleet(tmp_path: Path, certs: str = "") -> Fleet:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET + (f"\n[services.certs]\n{certs}" if certs else ""))
    return load_fleet(path)


def _cert(names: tuple[str, ...] = NAMES, days_left: float = 60,
          key_type: str = "ecdsa-p256") -> CertInfo:
    return CertInfo(names=names, issuer="Pebble Intermediate",
                    not_before=NOW - datetime.timedelta(days=30),
                    not_after=NOW + datetime.timedelta(days=days_left), serial="1",
                    key_type=key_type)


def test_names_are_routed_names_node_names_and_extras_once_each_sorted_lowercase(
        tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, 'extra_names = ["Fleet.example.com", "*.fleet.example.com", '
                             '"www.fleet.example.com."]')
    assert certificate_names(fleet, cert_settings(fleet)) == (
        "*.fleet.example.com", NAMES[0], "fleet.example.com", *NAMES[1:])


def test_a_wildcard_and_its_base_name_share_one_challenge_name() -> None:
    assert challenge_name("*.fleet.example.com") == "_acme-challenge.fleet.example.com."
    assert challenge_name("fleet.example.com") == "_acme-challenge.fleet.example.com."
    assert challenge_name("www.fleet.example.com") == "_acme-challenge.www.fleet.example.com."


def test_defaults_are_lets_encrypt_thirty_days_and_ecdsa_p256(tmp_path: Path) -> None:
    settings = cert_settings(_fleet(tmp_path))
    assert settings.directory_url == LETS_ENCRYPT
    assert (settings.renew_before_days, settings.key_type) == (30, "ecdsa-p256")
    assert settings.ca_bundle is None and settings.extra_names == ()


def test_a_relative_ca_bundle_is_found_next_to_the_fleet_file(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    settings = cert_settings(_fleet(tmp_path, 'ca_bundle = "ca.pem"'))
    assert settings.ca_bundle == (tmp_path / "ca.pem").resolve()


def test_each_bad_setting_is_one_line_naming_the_key_and_the_fix(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, 'directory_url = "acme.example.org"\nemail = "ops"\n'
                             'ca_bundle = "missing.pem"\nrenew_before_days = -1\n'
                             'extra_names = ["www.other.org", "bad_name.fleet.example.com", 7]')
    with pytest.raises(InventoryErrors) as raised:
        cert_settings(fleet)
    lines = str(raised.value).splitlines()
    assert len(lines) == 7
    expected = [
        "services.certs.directory_url: 'acme.example.org' is not an http(s) URL",
        "services.certs.email: 'ops' is not an e-mail address",
        "services.certs.ca_bundle: no file",
        "services.certs.renew_before_days: -1 is negative",
        "services.certs.extra_names[0]: 'www.other.org' is outside the fleet's domain",
        "services.certs.extra_names[1]: 'bad_name.fleet.example.com' is not a host name",
        "services.certs.extra_names[2]: expected a string, got int",
    ]
    for line, start in zip(lines, expected, strict=True):
        assert line.startswith(f"{fleet.path}: {start}"), line
        assert "; " in line  # the fix follows the problem


def test_the_loader_rejects_an_unknown_key_type_and_a_wrong_kind(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match=r"services\.certs\.key_type: 'dsa' is not one of "
                                             r"ecdsa-p256, ecdsa-p384, rsa-2048"):
        _fleet(tmp_path, 'key_type = "dsa"')
    with pytest.raises(InventoryError, match=r"services\.certs\.renew_before_days: expected"):
        _fleet(tmp_path, 'renew_before_days = "soon"')


@pytest.mark.parametrize(("current", "window", "expected"), [
    (None, 30, "no certificate stored"),
    (_cert(), 30, ""),
    (_cert(), None, ""),
    (_cert(days_left=10), 30, "expires in 10.0 days (renew 30 days before)"),
    (_cert(days_left=10), None, ""),  # issue: still fits, not renewing
    (_cert(days_left=-1), None, "expired on 2026-11-29"),
    (_cert(names=NAMES[1:]), 30, "not valid for api.fleet.example.com"),
    (_cert(names=(*NAMES, "old.fleet.example.com")), 30, ""),  # covers all current names
    (_cert(key_type="rsa-2048"), 30, "key is rsa-2048, not ecdsa-p256"),
])
def test_renewal_reason(current: CertInfo | None, window: int | None, expected: str) -> None:
    assert renewal_reason(current, NAMES, "ecdsa-p256", window, NOW) == expected


def test_a_certificate_from_another_acme_directory_is_replaced() -> None:
    assert renewal_reason(_cert(), NAMES, "ecdsa-p256", 30, NOW, "https://staging/dir",
                          LETS_ENCRYPT) == f"issued by https://staging/dir, not the configured " \
                                           f"{LETS_ENCRYPT}"
    assert renewal_reason(_cert(), NAMES, "ecdsa-p256", 30, NOW, LETS_ENCRYPT,
                          LETS_ENCRYPT) == ""


def test_a_record_missing_on_one_server_is_named_after_the_wait(
        monkeypatch: pytest.MonkeyPatch) -> None:
    endpoints = Endpoints({name: Endpoint(name, "http://127.0.0.1:1", "k", "127.0.0.1")
                           for name in ("a-1", "b-1")})
    asked: list[str] = []

    def answers(endpoint: Endpoint, name: str, timeout: float) -> frozenset[str]:
        asked.append(endpoint.node)
        if endpoint.node == "b-1":
            raise DnsError("DNS 127.0.0.1:53 did not answer: no answer in time")
        return frozenset({"v"})

    monkeypatch.setattr(challenge_module, "answers", answers)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(ChallengeNotVisible, match=r"^node b-1's DNS server did not answer TXT "
                                                  r"_acme-challenge\.x\. with the challenge "
                                                  r"after 3 s \(last: DNS 127"):
        wait_visible(endpoints, {"_acme-challenge.x.": ("v",)}, 3, clock=lambda: now[0],
                     sleep=sleep)
    assert asked.count("a-1") == 1  # a server that answered is not asked again
    assert asked.count("b-1") > 1


def test_a_second_run_while_one_holds_the_lock_is_refused_in_one_line(tmp_path: Path) -> None:
    from clonefleet.certs import CertError, ensure_certificate
    from clonefleet.certs.issue import LOCK
    from clonefleet.keystore import Keystore
    from clonefleet.secrets import open_secrets
    from clonefleet.state import open_store

    fleet = _fleet(tmp_path)
    store = open_store(tmp_path / "state")
    secrets = open_secrets(tmp_path / "state", Keystore(tmp_path / "ks", tmp_path / "age.key"))
    try:
        with store.lock(LOCK), pytest.raises(CertError) as raised:
            ensure_certificate(fleet, store, secrets, renewing=True, lock_seconds=0.2)
        assert raised.value.exit_code == 40
        assert str(raised.value).startswith("another certificate run for this fleet is in "
                                            "progress")
    finally:
        store.close()
