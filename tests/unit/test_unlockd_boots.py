"""How unlockd instances name a node's boots in the shared store, on both backends (SQLite:
unit; a real etcd: integration)."""

from __future__ import annotations

import pytest
from etcd_fixture import Backend

from clonefleet.state import StateStore, lifecycle
from clonefleet.unlockd import boots


@pytest.fixture
def store(backend: Backend) -> StateStore:
    return backend.open()


def test_first_initramfs_sighting_names_the_boot_and_later_ones_share_it(
        store: StateStore) -> None:
    first, new = boots.saw_initramfs(store, "n1", 100.0)
    assert new and first is not None and first.marker == "100000"
    again, new_again = boots.saw_initramfs(store, "n1", 130.0)
    assert not new_again and again == first
    assert boots.lease_name("n1", first.marker) == "unlock:n1:100000"


def test_sshd_between_two_initramfs_sightings_makes_a_new_boot(
        store: StateStore) -> None:
    first, _ = boots.saw_initramfs(store, "n1", 100.0)
    boots.saw_sshd(store, "n1", 200.0)
    second, new = boots.saw_initramfs(store, "n1", 300.0)
    assert new and first is not None and second is not None
    assert second.marker != first.marker and second.status == boots.WAITING


def test_initramfs_sighting_older_than_the_last_sshd_one_is_stale(
        store: StateStore) -> None:
    boots.saw_initramfs(store, "n1", 100.0)
    boots.saw_sshd(store, "n1", 200.0)
    stale, new = boots.saw_initramfs(store, "n1", 150.0)  # a slow probe from before
    assert stale is None and not new
    current = boots.current_boot(store, "n1")
    assert current is not None and current.status == boots.UP


def test_sshd_sighting_from_before_the_boot_began_does_not_end_it(
        store: StateStore) -> None:
    boots.saw_initramfs(store, "n1", 100.0)
    boots.saw_sshd(store, "n1", 90.0)
    current = boots.current_boot(store, "n1")
    assert current is not None and current.status == boots.WAITING


def test_expected_reboot_is_used_by_the_next_boot_only(store: StateStore) -> None:
    boots.expect_reboot(store, "n1", by="clonefleet power reset", at=95.0)
    first, _ = boots.saw_initramfs(store, "n1", 100.0)
    assert first is not None and first.expected and first.expected_by == "clonefleet power reset"
    boots.saw_sshd(store, "n1", 200.0)
    second, _ = boots.saw_initramfs(store, "n1", 300.0)
    assert second is not None and not second.expected


def test_a_reboot_unlocked_without_unlockd_spends_its_announcement(store: StateStore) -> None:
    # A rollout announced its reboot and unlocked the node itself, no unlockd watching.
    boots.expect_reboot(store, "n1", by="clonefleet update", at=95.0)
    assert boots.reboot_done(store, "n1", 100.0)
    assert store.get_fact("n1", boots.EXPECTED_REBOOT) is None
    # So a power loss minutes later is unexpected again: the policy decides.
    boot, _ = boots.saw_initramfs(store, "n1", 400.0)
    assert boot is not None and not boot.expected
    # An announcement made after that unlock is for a later reboot: kept.
    boots.expect_reboot(store, "n1", by="clonefleet power reset", at=500.0)
    assert not boots.reboot_done(store, "n1", 450.0)
    assert store.get_fact("n1", boots.EXPECTED_REBOOT)["by"] == "clonefleet power reset"
    assert not boots.reboot_done(store, "n2", 450.0)  # nothing announced: nothing spent


def test_stale_expected_reboot_does_not_make_a_boot_expected(store: StateStore) -> None:
    boots.expect_reboot(store, "n1", by="rollout", at=100.0)
    boot, _ = boots.saw_initramfs(store, "n1", 100.0 + boots.EXPECTED_WINDOW + 1)
    assert boot is not None and not boot.expected


def test_recorded_unlock_marks_the_boot_keeps_history_and_uses_up_the_approval(
        store: StateStore) -> None:
    boot, _ = boots.saw_initramfs(store, "n1", 100.0)
    assert boot is not None
    boots.approve(store, "n1", by="op", at=110.0)
    assert boots.approval_at(store, "n1") == 110.0
    boots.record_unlock(store, "n1", boot.marker, by="a", at=120.0)
    current = boots.current_boot(store, "n1")
    assert current is not None and current.status == boots.UNLOCKED
    assert current.unlocked_by == "a"
    assert boots.unlock_history(store, "n1") == [120.0]
    assert boots.approval_at(store, "n1") is None


def test_an_alert_is_claimed_once(store: StateStore) -> None:
    assert boots.claim_alert(store, "n1", "impostor:dropbear:SHA256:x")
    assert not boots.claim_alert(store, "n1", "impostor:dropbear:SHA256:x")
    assert boots.claim_alert(store, "n1", "impostor:dropbear:SHA256:y")


def test_unlocked_boot_that_went_silent_and_came_back_is_a_new_boot(
        store: StateStore) -> None:
    """A node that panics early after its unlock is back in its initramfs without sshd ever
    answering: silence after the unlock ends the boot."""
    first, _ = boots.saw_initramfs(store, "n1", 100.0)
    assert first is not None
    boots.record_unlock(store, "n1", first.marker, by="a", at=110.0)
    boots.saw_silence(store, "n1", 120.0)
    second, new = boots.saw_initramfs(store, "n1", 180.0)
    assert new and second is not None and second.marker != first.marker


def test_waiting_boot_that_goes_silent_a_moment_stays_the_same_boot(
        store: StateStore) -> None:
    first, _ = boots.saw_initramfs(store, "n1", 100.0)
    boots.saw_silence(store, "n1", 120.0)  # a network blip, not a reboot
    again, new = boots.saw_initramfs(store, "n1", 130.0)
    assert not new and again == first


def test_an_unlocker_without_a_published_policy_waits_for_approvals(
        store: StateStore) -> None:
    from clonefleet.unlockd.policy import FleetUnlockPolicy, UnlockPolicy
    from clonefleet.unlockd.service import publish_config, published_config

    policy, regions, urls = published_config(store)
    assert policy.for_region("fsn").unexpected == "approve" and regions == {} and urls == []
    publish_config(store, FleetUnlockPolicy(UnlockPolicy("after", 600.0)), {"n1": "fsn"},
                   ["json://127.0.0.1:9/alerts"])
    policy, regions, urls = published_config(store)
    assert policy.for_region("fsn") == UnlockPolicy("after", 600.0)
    assert regions == {"n1": "fsn"} and urls == ["json://127.0.0.1:9/alerts"]


def unlockd_drained_boot(store: StateStore) -> boots.Boot:
    """Boot 1 of an active node that unlockd drained, then saw up (not returned yet)."""
    store.set_state("n1", "active", actor="test")
    first, _ = boots.saw_initramfs(store, "n1", 100.0)
    assert first is not None
    store.apply("n1", lifecycle.DRAIN, actor=boots.ACTOR, reason="unexpected reboot")
    boots.update_boot(store, "n1", first.marker, drained=True)
    boots.saw_sshd(store, "n1", 200.0)
    return first


def test_a_boot_before_the_drained_node_was_returned_inherits_its_return(
        store: StateStore) -> None:
    # The controller's instance (the one that returns nodes) was down for both boots: the
    # second boot must still bring the node back, or it stays out of DNS for good.
    unlockd_drained_boot(store)
    second, new = boots.saw_initramfs(store, "n1", 300.0)
    assert new and second is not None and second.drained


@pytest.mark.parametrize("meanwhile", ["returned", "drained by an operator"])
def test_a_node_someone_else_moved_since_is_not_returned_by_the_next_boot(
        store: StateStore, meanwhile: str) -> None:
    unlockd_drained_boot(store)
    store.apply("n1", lifecycle.UNDRAIN, actor="operator", reason="back")
    if meanwhile == "drained by an operator":
        store.apply("n1", lifecycle.DRAIN, actor="operator", reason="maintenance")
    second, _ = boots.saw_initramfs(store, "n1", 300.0)
    assert second is not None and not second.drained
