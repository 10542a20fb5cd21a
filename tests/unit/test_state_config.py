"""Choosing the state store in the fleet file: SQLite unless told, etcd by URL or [state]
table, and one line naming the key and the fix for every bad value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clonefleet.errors import InventoryError, StateError
from clonefleet.inventory import load_fleet
from clonefleet.state import SqliteStateStore, StateConfig, open_store
from clonefleet.state.etcd import EtcdStateStore

pytestmark = pytest.mark.unit

FLEET = """
[fleet]
name = "t"
domain = "fleet.example.com"
{fleet_extra}

[regions.fsn]
provider = "lab"
latitude = 50.47
longitude = 12.37

[nodes.n1]
region = "fsn"
disks = ["SER-1"]
ipv4 = "192.0.2.1"
{extra}
"""


def load(tmp_path: Path, fleet_extra: str = "", extra: str = "") -> StateConfig:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET.format(fleet_extra=fleet_extra, extra=extra))
    return load_fleet(path).state


def error(tmp_path: Path, fleet_extra: str = "", extra: str = "") -> str:
    with pytest.raises(InventoryError) as caught:
        load(tmp_path, fleet_extra, extra)
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "fleet.toml") in message
    return message


def test_a_fleet_that_says_nothing_keeps_sqlite_in_its_state_folder(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert config.backend == "sqlite"
    store = open_store(tmp_path / "state" / "t", config)
    assert isinstance(store, SqliteStateStore)
    assert store.path == tmp_path / "state" / "t" / "state.sqlite"


def test_an_etcd_url_names_every_endpoint_and_the_prefix(tmp_path: Path) -> None:
    config = load(tmp_path, 'state = "etcd://10.0.0.1:2379,10.0.0.2:2379/clonefleet/prod"')
    assert config.backend == "etcd"
    assert config.endpoints == ("http://10.0.0.1:2379", "http://10.0.0.2:2379")
    assert config.key_prefix("t") == "/clonefleet/prod/"
    store = open_store(tmp_path, config)
    assert isinstance(store, EtcdStateStore) and store.prefix == b"/clonefleet/prod/"


def test_an_etcd_url_without_prefix_keys_the_fleet_by_its_name(tmp_path: Path) -> None:
    config = load(tmp_path, 'state = "etcd://127.0.0.1:2379"')
    assert config.key_prefix("t") == "/clonefleet/t/"


def test_a_state_table_with_tls_files_uses_https(tmp_path: Path) -> None:
    config = load(tmp_path, extra="""
[state]
backend = "etcd"
endpoints = ["10.0.0.1:2379", "https://10.0.0.2:2379"]
prefix = "fleets/prod"
ca_cert = "/etc/clonefleet/etcd-ca.pem"
cert = "/etc/clonefleet/etcd.pem"
key = "/etc/clonefleet/etcd-key.pem"
""")
    assert config.endpoints == ("https://10.0.0.1:2379", "https://10.0.0.2:2379")
    assert (config.ca_cert, config.cert, config.key) == (
        "/etc/clonefleet/etcd-ca.pem", "/etc/clonefleet/etcd.pem", "/etc/clonefleet/etcd-key.pem")
    assert config.key_prefix("t") == "/fleets/prod/"


@pytest.mark.parametrize(("fleet_extra", "extra", "expected"), [
    ('state = "postgres://db/x"', "", r"fleet.state: unknown state store 'postgres://db/x'; "
                                      r"use 'etcd://127.0.0.1:2379/clonefleet' or 'sqlite'"),
    ('state = "etcd://10.0.0.1/x"', "", r"fleet.state: bad etcd endpoint '10.0.0.1' .*"
                                        r"write HOST:PORT"),
    ('state = "etcd://10.0.0.1:99999/x"', "", r"fleet.state: bad etcd endpoint"),
    ('state = "etcd://10.0.0.1:2379/a b"', "", r"fleet.state: bad etcd key prefix 'a b'"),
    ('state = "sqlite"', '[state]\nbackend = "etcd"\nendpoints = ["h:1"]',
     r"fleet.state: the state store is set twice .*; keep one of them"),
    ("", '[state]\nbackend = "consul"', r"state.backend: unknown backend 'consul'; "
                                         r"use one of: sqlite, etcd"),
    ("", '[state]\nbackend = "etcd"', r"state.endpoints: missing or not a list of strings"),
    ("", '[state]\nbackend = "etcd"\nendpoints = ["h:1"]\ncert = "c.pem"',
     r"state.key: a client certificate needs both cert and key"),
    ("", '[state]\nbackend = "etcd"\nendpoints = ["http://h:1"]\nca_cert = "ca.pem"',
     r"state.endpoints: TLS files given but an endpoint is http://"),
    ("", '[state]\nendpoints = ["h:1"]', r"state.endpoints: only meaningful with backend = "),
    ("", '[state]\nbackend = "etcd"\nendpoints = ["h:1"]\nttl = 3', r"state.ttl: unknown key"),
    ("", '[state]\nbackend = "etcd"\nendpoints = ["h:1"]\ntimeout = 0',
     r"state.timeout: expected a positive number of seconds"),
])
def test_bad_state_settings_are_one_line_naming_the_key_and_the_fix(
        tmp_path: Path, fleet_extra: str, extra: str, expected: str) -> None:
    assert re.search(expected, error(tmp_path, fleet_extra, extra))


def test_an_etcd_store_without_endpoints_is_refused_with_the_fix() -> None:
    with pytest.raises(StateError, match="needs at least one endpoint; set"):
        open_store("/nonexistent/t", StateConfig("etcd"))
