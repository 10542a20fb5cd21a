"""Per-node passphrases, encrypted at rest with age."""

from __future__ import annotations

from pathlib import Path

import pytest

from clonefleet.errors import KeystoreError
from clonefleet.keystore import Keystore

pytestmark = pytest.mark.unit


def test_passphrase_is_random_per_node_and_stable_once_created(tmp_path: Path) -> None:
    store = Keystore(tmp_path / "ks", tmp_path / "age.key")
    first, second = store.create("n1"), store.create("n2")
    assert first != second and len(first) >= 40
    assert store.create("n1") == first == store.get("n1")


def test_passphrase_is_not_stored_in_clear(tmp_path: Path) -> None:
    store = Keystore(tmp_path / "ks", tmp_path / "age.key")
    passphrase = store.create("n1")
    data = (tmp_path / "ks" / "n1.age").read_bytes()
    assert passphrase.encode() not in data
    assert data.startswith(b"age-encryption.org/v1")
    assert oct((tmp_path / "age.key").stat().st_mode & 0o777) == "0o600"


def test_missing_identity_gives_a_clear_error_naming_the_key_file(tmp_path: Path) -> None:
    Keystore(tmp_path / "ks", tmp_path / "age.key").create("n1")
    (tmp_path / "age.key").unlink()
    with pytest.raises(KeystoreError, match=r"age\.key is missing.*CLONEFLEET_AGE_KEY"):
        Keystore(tmp_path / "ks", tmp_path / "age.key").get("n1")


def test_wrong_identity_cannot_decrypt(tmp_path: Path) -> None:
    Keystore(tmp_path / "ks", tmp_path / "age.key").create("n1")
    other = Keystore(tmp_path / "ks", tmp_path / "other.key")
    other.create("n2")  # creates a different identity
    with pytest.raises(KeystoreError, match="wrong keystore key"):
        other.get("n1")


def test_unknown_node_is_reported(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="no passphrase stored for node 'n9'"):
        Keystore(tmp_path / "ks", tmp_path / "age.key").get("n9")


def test_ensure_identity_creates_the_key_once_and_keeps_it_afterwards(tmp_path: Path) -> None:
    store = Keystore(tmp_path / "ks", tmp_path / "age.key")
    store.ensure_identity()
    key = (tmp_path / "age.key").read_text()
    store.ensure_identity()  # a second call (another node's) is no error and changes nothing
    passphrase = store.create("n1")
    assert (tmp_path / "age.key").read_text() == key
    assert Keystore(tmp_path / "ks", tmp_path / "age.key").get("n1") == passphrase


def test_replace_swaps_a_nodes_passphrase_whole_and_refuses_an_unknown_node(
        tmp_path: Path) -> None:
    store = Keystore(tmp_path / "ks", tmp_path / "age.key")
    old = store.create("n1")

    store.replace("n1", "the-rotated-passphrase")

    assert store.get("n1") == "the-rotated-passphrase" != old
    assert b"the-rotated-passphrase" not in (tmp_path / "ks" / "n1.age").read_bytes()
    assert sorted(path.name for path in (tmp_path / "ks").iterdir()) == ["n1.age"]
    with pytest.raises(KeystoreError, match="no passphrase stored for node 'n2'"):
        store.replace("n2", "x")
