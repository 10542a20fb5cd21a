"""The deploy secret store: encrypted at rest, created once, never shown by accident."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from clonefleet.errors import KeystoreError
from clonefleet.keystore import Keystore
from clonefleet.secrets import FLEET, Secret, SecretStore, open_secrets, random_token

pytestmark = pytest.mark.unit


def _store(tmp_path: Path) -> SecretStore:
    return open_secrets(tmp_path / "state", Keystore(tmp_path / "state" / "keystore",
                                                     tmp_path / "age.key"))


def test_a_secret_is_created_once_and_stored_encrypted(tmp_path: Path) -> None:
    store = _store(tmp_path)
    first = store.get_or_create("fsn-1", "pdns_api_key", random_token)
    assert store.get_or_create("fsn-1", "pdns_api_key", random_token) == first
    assert store.get("fsn-1", "pdns_api_key") == first
    stored = (tmp_path / "state" / "secrets" / "fsn-1" / "pdns_api_key.age").read_bytes()
    assert first.encode() not in stored
    assert stored.startswith(b"age-encryption.org/v1")
    assert store.get_or_create(FLEET, "pdns_api_key", random_token) != first


def test_a_missing_secret_or_wrong_key_is_a_one_line_error(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(KeystoreError, match="no secret 'tls_key' stored for 'fsn-1'"):
        store.get("fsn-1", "tls_key")
    store.put("fsn-1", "tls_key", "x")
    other = open_secrets(tmp_path / "state", Keystore(tmp_path / "k", tmp_path / "other.key"))
    Keystore(tmp_path / "k", tmp_path / "other.key").ensure_identity()
    with pytest.raises(KeystoreError, match="wrong keystore key"):
        other.get("fsn-1", "tls_key")
    with pytest.raises(KeystoreError, match="not a plain name"):
        store.get("../etc", "passwd")


def test_concurrent_creation_stores_one_value_that_every_caller_gets(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.keystore.ensure_identity()
    results: list[str] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        results.append(store.get_or_create("fsn-1", "wg_private", random_token))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and len(set(results)) == 1
    assert not list((tmp_path / "state" / "secrets" / "fsn-1").glob("*.tmp"))


def test_secret_values_hide_from_repr_and_str_and_a_retired_node_loses_its_secrets(
        tmp_path: Path) -> None:
    assert "hunter2" not in repr(Secret("hunter2")) + str(Secret("hunter2"))
    store = _store(tmp_path)
    store.put("fsn-1", "a", "1")
    store.delete_scope("fsn-1")
    assert not store.has("fsn-1", "a")
    assert not (tmp_path / "state" / "secrets" / "fsn-1").exists()
