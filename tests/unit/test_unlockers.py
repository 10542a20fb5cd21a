"""keys grant|revoke: every entry re-encrypted to the controller and the granted unlockers,
whole at every moment; an unlocker reads only the store's mirror, with its own key."""

from __future__ import annotations

from pathlib import Path

import pytest

from clonefleet.errors import ConfigError, KeystoreError
from clonefleet.keystore import Keystore
from clonefleet.ssh import generate_ed25519
from clonefleet.state import SqliteStateStore
from clonefleet.unlockers import (
    GRANTED,
    REVOKING,
    UnlockerPassphrases,
    fleet_keystore,
    grant,
    registered,
    revoke,
)

pytestmark = pytest.mark.unit

Setup = tuple[SqliteStateStore, Keystore, Path, str]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    store = SqliteStateStore(tmp_path / "state.sqlite")
    keystore = fleet_keystore(tmp_path, store, tmp_path / "age.key")
    for node in ("n1", "n2", "n3"):
        keystore.create(node)
    key = generate_ed25519("unlocker@u1")
    identity = tmp_path / "u1.key"
    identity.write_text(key.private_openssh)
    return store, keystore, identity, key.public_line


def test_granted_unlocker_opens_every_passphrase_from_the_store_alone(setup: Setup) -> None:
    store, keystore, identity, public = setup
    report = grant(store, keystore, "u1", public)
    assert report.nodes == ("n1", "n2", "n3")
    assert registered(store)["u1"].status == GRANTED
    reader = UnlockerPassphrases(store, identity)
    for node in ("n1", "n2", "n3"):
        assert reader.get(node) == keystore.get(node)  # the controller still opens them too


def test_node_created_after_the_grant_is_encrypted_to_the_unlocker_too(setup: Setup) -> None:
    store, keystore, identity, public = setup
    grant(store, keystore, "u1", public)
    passphrase = keystore.create("n4")
    assert UnlockerPassphrases(store, identity).get("n4") == passphrase


def test_revoked_unlocker_cannot_decrypt_and_says_so_in_one_line(setup: Setup) -> None:
    store, keystore, identity, public = setup
    grant(store, keystore, "u1", public)
    before = {node: keystore.get(node) for node in ("n1", "n2", "n3")}
    revoke(store, keystore, "u1")
    assert "u1" not in registered(store)
    with pytest.raises(KeystoreError) as caught:
        UnlockerPassphrases(store, identity).get("n1")
    assert "\n" not in str(caught.value)
    assert "cannot decrypt n1's passphrase: not granted, or revoked" in str(caught.value)
    # Nothing lost: the controller opens every entry, unchanged.
    assert {node: keystore.get(node) for node in before} == before


def test_interrupted_revoke_says_what_is_left_and_finishes_when_run_again(
        setup: Setup, tmp_path: Path) -> None:
    store, keystore, identity, public = setup
    grant(store, keystore, "u1", public)
    n2 = tmp_path / "keystore" / "n2.age"
    saved = n2.read_bytes()
    n2.write_bytes(b"not age")  # an entry that cannot be re-encrypted now
    with pytest.raises(KeystoreError) as caught:
        revoke(store, keystore, "u1")
    message = str(caught.value)
    assert "revoke of unlocker 'u1' unfinished: 1 of 3 entries re-encrypted" in message
    assert "n2, n3 not yet" in message and "clonefleet keys revoke u1" in message
    assert registered(store)["u1"].status == REVOKING
    # The entries done already are whole and no longer open to the unlocker.
    with pytest.raises(KeystoreError):
        UnlockerPassphrases(store, identity).get("n1")
    n2.write_bytes(saved)
    assert revoke(store, keystore, "u1").nodes == ("n1", "n2", "n3")
    assert "u1" not in registered(store)
    with pytest.raises(KeystoreError):
        UnlockerPassphrases(store, identity).get("n3")


def test_grant_refuses_what_is_not_an_ssh_ed25519_key(setup: Setup) -> None:
    store, keystore, _, _ = setup
    with pytest.raises(ConfigError, match="not an ssh-ed25519 public key"):
        grant(store, keystore, "u1", "age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgp")
    assert registered(store) == {}


def test_grant_under_a_taken_name_with_another_key_is_refused(setup: Setup) -> None:
    store, keystore, _, public = setup
    grant(store, keystore, "u1", public)
    with pytest.raises(ConfigError, match="registered with another key; revoke it first"):
        grant(store, keystore, "u1", generate_ed25519("other").public_line)


def test_revoke_of_an_unknown_unlocker_names_the_granted_ones(setup: Setup) -> None:
    store, keystore, _, public = setup
    grant(store, keystore, "u1", public)
    with pytest.raises(ConfigError, match=r"no unlocker named 'u9' is granted \(granted: u1\)"):
        revoke(store, keystore, "u9")


def test_no_temporary_file_is_left_after_re_encryption(setup: Setup, tmp_path: Path) -> None:
    store, keystore, _, public = setup
    grant(store, keystore, "u1", public)
    revoke(store, keystore, "u1")
    assert sorted(path.name for path in (tmp_path / "keystore").iterdir()) == [
        "n1.age", "n2.age", "n3.age"]
