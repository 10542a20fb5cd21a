"""`clonefleet cert …` against a real ACME server (pebble) and real PowerDNS servers on
loopback: pebble asks one of the fleet's DNS servers for the DNS-01 records, the control plane
publishes them to all of them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from fleet_text import ASH, FSN, FleetNode, fleet_toml
from pdns_fixture import (
    CLIENT_NETWORKS,
    PowerDnsServer,
    activate_all,
    powerdns_available,
    start_powerdns_servers,
    stop_all,
    write_lab_fleet,
)
from pebble_fixture import Pebble, pebble_available, start_pebble

from clonefleet.certs import (
    AcmeUnreachable,
    ChallengeNotPublished,
    ChallengeNotVisible,
    ensure_certificate,
)
from clonefleet.certs.challenge import publish_records, remove_records
from clonefleet.cli import _register, cli
from clonefleet.dnsmap import ENDPOINT_FACT, Endpoints, build_geoip_database, publish, verify
from clonefleet.dnsmap.powerdns import ask
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.keystore import Keystore
from clonefleet.lab.qemu import free_port
from clonefleet.secrets import FLEET, SecretStore, open_secrets
from clonefleet.state import SqliteStateStore, open_store

pytestmark = pytest.mark.integration
_register()

ZONE = "certlab.clonefleet.test."
WWW = {"name": "www", "ttl": 30}


def fleet_text(routed: list[dict[str, str | int]]) -> str:
    return fleet_toml(
        "certlab", "certlab.clonefleet.test", [FSN, replace(ASH, min_active=0)],
        [FleetNode("fsn-1", "fsn", "C-FSN1", ipv4="192.0.2.11"),
         FleetNode("fsn-2", "fsn", "C-FSN2", ipv4="192.0.2.12"),
         FleetNode("ash-1", "ash", "C-ASH1", ipv4="198.51.100.21")],
        settings={"min_active_total": 1, "dns_grace_seconds": 1}, routed=routed)


FLEET_TEXT = fleet_text([WWW])
NAMES = ["ash-1.certlab.clonefleet.test", "fsn-1.certlab.clonefleet.test",
         "fsn-2.certlab.clonefleet.test", "www.certlab.clonefleet.test"]


@dataclass
class AcmeLab:
    servers: dict[str, PowerDnsServer]
    pebble: Pebble


@dataclass
class Run:
    """One test's fleet file, state store and secrets, on the module's servers."""

    fleet: Fleet
    store: SqliteStateStore
    secrets: SecretStore
    state_root: Path
    age_key: Path
    lab: AcmeLab

    def txt_everywhere(self, name: str) -> dict[str, frozenset[str]]:
        return {node: ask(server.endpoint, name, "TXT").records
                for node, server in self.lab.servers.items()}


def settings_table(pebble: Pebble, extra: str = "") -> str:
    return (f'\n[services.certs]\ndirectory_url = "{pebble.directory_url}"\n'
            f'ca_bundle = "{pebble.ca_bundle}"\nemail = "ops@example.com"\n'
            f"dns_wait_seconds = 10\n{extra}")


@pytest.fixture(scope="module")
def acme_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcmeLab]:
    """Three PowerDNS servers (the nodes' own) and pebble asking the second of them."""
    if not powerdns_available() or not pebble_available():
        pytest.fail("pdns_server, pdns-backend-sqlite3 or pebble is missing; run scripts/setup")
    root = tmp_path_factory.mktemp("acme-lab")
    fleet = write_lab_fleet(root, FLEET_TEXT)
    geoip = build_geoip_database(fleet, root / "nodes.mmdb", CLIENT_NETWORKS)
    names = sorted(fleet.nodes)
    servers = dict(zip(names, start_powerdns_servers(len(names), root / "pdns", [geoip], names),
                       strict=True))
    try:
        pebble = start_pebble(root / "pebble", servers["fsn-1"].dns_port)
        try:
            yield AcmeLab(servers, pebble)
        finally:
            pebble.stop()
    finally:
        stop_all(list(servers.values()))


def new_run(lab: AcmeLab, directory: Path, extra: str = "") -> Run:
    fleet = write_lab_fleet(directory, FLEET_TEXT + settings_table(lab.pebble, extra))
    state_root = directory / "state"
    store = open_store(state_root / fleet.name)
    activate_all(fleet, store)
    for name, server in lab.servers.items():
        store.set_fact(name, ENDPOINT_FACT, server.endpoint.as_fact())
    assert publish(fleet, store, actor="test").ok
    age_key = directory / "age.key"
    secrets = open_secrets(state_root / fleet.name,
                           Keystore(state_root / fleet.name / "keystore", age_key))
    return Run(fleet, store, secrets, state_root, age_key, lab)


@pytest.fixture
def run(acme_lab: AcmeLab, tmp_path: Path) -> Iterator[Run]:
    prepared = new_run(acme_lab, tmp_path)
    yield prepared
    prepared.store.close()


def rewrite(run: Run, text: str, extra: str = "") -> Fleet:
    """Change the run's fleet file (same state and servers); the fleet as loaded now."""
    run.fleet.path.write_text(text + settings_table(run.lab.pebble, extra))
    run.fleet = load_fleet(run.fleet.path)
    return run.fleet


def cli_run(run: Run, *arguments: str) -> Result:
    environment = {"CLONEFLEET_STATE_DIR": str(run.state_root),
                   "CLONEFLEET_AGE_KEY": str(run.age_key)}
    return CliRunner().invoke(cli, ["--fleet", str(run.fleet.path), *arguments],
                              env=environment, catch_exceptions=False)


def chain_of(run: Run) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(run.secrets.get(FLEET, "tls_chain").encode())


def test_issue_proves_every_name_on_every_server_and_stores_a_chain_to_pebbles_root(
        run: Run) -> None:
    seen_during_validation: dict[str, dict[str, frozenset[str]]] = {}

    def progress(line: str) -> None:
        if line.startswith("challenges validated"):
            for name in NAMES:
                challenge = f"_acme-challenge.{name}."
                seen_during_validation[challenge] = run.txt_everywhere(challenge)

    result = ensure_certificate(run.fleet, run.store, run.secrets, renewing=False, log=progress)

    assert result.issued and result.reason == "no certificate stored"
    assert result.certificate is not None and list(result.certificate.names) == NAMES
    # Every node's server answered every challenge while the CA validated...
    assert sorted(seen_during_validation) == sorted(f"_acme-challenge.{n}." for n in NAMES)
    for per_server in seen_during_validation.values():
        assert set(per_server) == set(run.lab.servers)
        assert all(len(records) == 1 for records in per_server.values()), per_server
        assert len(set(per_server.values())) == 1  # the same value on every server
    # ...and none of them does any more.
    for name in NAMES:
        assert not any(run.txt_everywhere(f"_acme-challenge.{name}.").values())

    leaf, *intermediates = chain_of(run)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == NAMES
    issuers = [*intermediates, run.lab.pebble.issuing_root()]
    current = leaf
    for issuer in issuers:
        current.verify_directly_issued_by(issuer)
        current = issuer
    key = run.secrets.get(FLEET, "tls_key")
    assert key.startswith("-----BEGIN PRIVATE KEY-----")
    # The key is stored only encrypted: no file under the state folder holds it in clear.
    body = key.splitlines()[1].encode()
    assert not any(body in path.read_bytes() for path in run.state_root.rglob("*")
                   if path.is_file())


def test_renew_does_nothing_while_valid_and_reissues_for_new_names_or_inside_the_window(
        run: Run) -> None:
    first = ensure_certificate(run.fleet, run.store, run.secrets, renewing=True)
    assert first.issued and first.certificate is not None
    again = ensure_certificate(run.fleet, run.store, run.secrets, renewing=True)
    assert not again.issued and again.certificate == first.certificate

    # A new routed name is missing from the stored certificate: renew obtains one with it.
    widened = rewrite(run, fleet_text([{"name": "api"}, WWW]))
    renewed = ensure_certificate(widened, run.store, run.secrets, renewing=True)
    assert renewed.issued and renewed.reason == "not valid for api.certlab.clonefleet.test"
    assert renewed.certificate is not None
    assert "api.certlab.clonefleet.test" in renewed.certificate.names
    assert renewed.certificate.serial != first.certificate.serial

    # A renewal window longer than the certificate's life: every renew obtains a new one.
    eager = rewrite(run, FLEET_TEXT, "renew_before_days = 100000\n")
    assert renewed.certificate.days_left(renewed.certificate.not_before) < 100000
    third = ensure_certificate(eager, run.store, run.secrets, renewing=True)
    assert third.issued and third.reason.startswith("expires in")
    assert third.certificate is not None and third.certificate.serial != renewed.certificate.serial


def test_cli_issue_show_and_renew_with_exit_codes_and_progress(run: Run) -> None:
    shown = cli_run(run, "cert", "show")
    assert shown.exit_code == 45
    assert "no certificate stored" in shown.output

    issued = cli_run(run, "--json", "cert", "issue")
    assert issued.exit_code == 0, issued.output
    assert "publishing" in issued.stderr and "waiting until every DNS server" in issued.stderr
    document = json.loads(issued.stdout)
    assert document["issued"] is True and document["certificate"]["names"] == NAMES

    renewed = cli_run(run, "cert", "renew")
    assert renewed.exit_code == 0 and "nothing to do" in renewed.stdout

    shown = json.loads(cli_run(run, "--json", "cert", "show").stdout)
    assert shown["names"] == NAMES and shown["missing_names"] == []
    assert shown["days_left"] > 30 and shown["issuer"]

    forced = cli_run(run, "--json", "cert", "issue", "--force")
    assert forced.exit_code == 0 and json.loads(forced.stdout)["reason"] == "forced"
    assert json.loads(forced.stdout)["certificate"]["serial"] != shown["serial"]


def test_a_server_refusing_the_change_fails_in_one_line_and_leaves_no_record(run: Run) -> None:
    refusing = run.lab.servers["fsn-2"].endpoint.as_fact() | {"api_key": "wrong-key"}
    run.store.set_fact("fsn-2", ENDPOINT_FACT, refusing)

    result = cli_run(run, "cert", "issue")

    assert result.exit_code == ChallengeNotPublished.exit_code
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: could not publish the challenge records on fsn-2 ")
    assert "HTTP 401" in lines[-1] and "Traceback" not in result.output
    for name in NAMES:
        assert not any(run.txt_everywhere(f"_acme-challenge.{name}.").values())
    assert not run.secrets.has(FLEET, "tls_chain")


def test_a_server_that_never_answers_the_record_is_named_and_the_records_removed(
        run: Run) -> None:
    # ash-1's API takes the records, but its DNS port answers nothing.
    silent = run.lab.servers["ash-1"].endpoint.as_fact() | {"dns_port": free_port()}
    run.store.set_fact("ash-1", ENDPOINT_FACT, silent)
    path = run.fleet.path
    path.write_text(path.read_text().replace("dns_wait_seconds = 10", "dns_wait_seconds = 2"))

    result = cli_run(run, "cert", "issue")

    assert result.exit_code == ChallengeNotVisible.exit_code, result.output
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: node ash-1's DNS server did not answer TXT _acme-challenge.")
    assert "after 2 s" in error
    for name in NAMES:
        assert not any(run.txt_everywhere(f"_acme-challenge.{name}.").values())


def test_an_unreachable_acme_directory_is_one_line_and_publishes_nothing(
        acme_lab: AcmeLab, tmp_path: Path) -> None:
    run = new_run(acme_lab, tmp_path)
    path = run.fleet.path
    path.write_text(path.read_text().replace(acme_lab.pebble.directory_url,
                                             f"https://127.0.0.1:{free_port()}/dir"))

    result = cli_run(run, "cert", "issue")

    assert result.exit_code == AcmeUnreachable.exit_code
    assert result.stderr.count("\n") >= 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: read the ACME directory: ACME server https://127.0.0.1:")
    assert "unreachable" in error and "directory_url" in error
    for name in NAMES:
        assert not any(run.txt_everywhere(f"_acme-challenge.{name}.").values())


def test_a_node_without_a_dns_endpoint_is_named(run: Run) -> None:
    run.store.set_fact("fsn-2", ENDPOINT_FACT, None)
    with pytest.raises(ChallengeNotPublished, match=r"^node fsn-2 has no DNS endpoint"):
        ensure_certificate(run.fleet, run.store, run.secrets, renewing=False)


def test_challenge_records_survive_a_concurrent_dns_publish_and_verify_ignores_them(
        run: Run) -> None:
    endpoints = {name: server.endpoint for name, server in run.lab.servers.items()}
    challenge = "_acme-challenge.www.certlab.clonefleet.test."
    both = Endpoints(endpoints)
    publish_records(both, ZONE, {challenge: ("token-1",)})
    try:
        # A drain changes the map: the publish replaces the routed rrset and must leave the
        # challenge record alone on every server.
        run.store.set_state("fsn-2", "draining", actor="test", reason="test")
        assert publish(run.fleet, run.store, actor="test").ok
        assert all(records == frozenset({'"token-1"'})
                   for records in run.txt_everywhere(challenge).values())
        checked = verify(run.fleet, run.store)
        assert checked.ok, checked.disagreements
    finally:
        assert remove_records(both, ZONE, [challenge]) == {}
    assert not any(run.txt_everywhere(challenge).values())



def test_the_account_is_registered_once_and_again_only_if_the_server_forgot_it(
        run: Run) -> None:
    from clonefleet.certs.stored import ACCOUNT_FACT
    from clonefleet.state import FLEET_FACTS

    directory = run.lab.pebble.directory_url
    ensure_certificate(run.fleet, run.store, run.secrets, renewing=False)
    accounts = run.store.get_fact(FLEET_FACTS, ACCOUNT_FACT)
    assert list(accounts) == [directory] and accounts[directory].startswith("https://127.0.0.1")
    ensure_certificate(run.fleet, run.store, run.secrets, renewing=False, force=True)
    assert run.store.get_fact(FLEET_FACTS, ACCOUNT_FACT) == accounts

    # An account URL the server does not know (a deactivated account, a restarted CA).
    gone = accounts[directory].rsplit("/", 1)[0] + "/999999999"
    run.store.set_fact(FLEET_FACTS, ACCOUNT_FACT, {directory: gone})
    notes: list[str] = []
    again = ensure_certificate(run.fleet, run.store, run.secrets, renewing=False, force=True,
                               log=notes.append)
    assert again.issued
    assert any(note.startswith("the ACME server no longer knows the stored account")
               for note in notes)
    assert run.store.get_fact(FLEET_FACTS, ACCOUNT_FACT) == accounts  # same key, same account
