"""unlockd's policy: parsing from the fleet file, and every decision (pure)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from fleet_text import FSN, HEL, FleetNode, fleet_toml

from clonefleet.errors import InventoryError, InventoryErrors
from clonefleet.inventory import load_fleet
from clonefleet.unlockd.policy import UnlockPolicy, decide, parse_duration, parse_policy

pytestmark = pytest.mark.unit


def fleet_text(unlock: dict[str, str | int] | None,
               fsn_unlock: dict[str, str] | None = None) -> str:
    """n1 in fsn, n2 in hel; the fleet's [unlock] table and fsn's own, when given."""
    return fleet_toml("t", "fleet.example.com", [replace(FSN, unlock=fsn_unlock), HEL],
                      [FleetNode("n1", "fsn", "SER-1"), FleetNode("n2", "hel", "SER-2")],
                      unlock=unlock)


NOW = 10_000.0


@pytest.mark.parametrize(("text", "seconds"), [("10 minutes", 600.0), ("90 s", 90.0),
                                               ("1 hour", 3600.0), (30, 30.0),
                                               ("2.5 min", 150.0)])
def test_durations_in_words_or_seconds_parse(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["ten minutes", "10 fortnights", -1, True, "", None])
def test_malformed_durations_are_refused(text: object) -> None:
    assert parse_duration(text) is None


def test_fleet_policy_and_region_override_load_from_the_fleet_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(fleet_text(
        unlock={"unexpected": "after", "after": "10 minutes", "loop_unlocks": 5},
        fsn_unlock={"unexpected": "approve"}))
    fleet = load_fleet(path)
    assert fleet.unlock.for_region("hel") == UnlockPolicy("after", 600.0, 5, 1800.0)
    # The region overrides only what it names; the rest is the fleet's.
    assert fleet.unlock.for_region("fsn") == UnlockPolicy("approve", 600.0, 5, 1800.0)


def test_without_an_unlock_table_unexpected_reboots_unlock_at_once(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(fleet_text(unlock=None))
    assert load_fleet(path).unlock.for_region("fsn").unexpected == "immediate"


def test_bad_policy_values_are_each_named_with_their_key_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(fleet_text(
        unlock={"unexpected": "sometimes", "loop_window": "forever"},
        fsn_unlock={"after": "soon"}))
    with pytest.raises((InventoryError, InventoryErrors)) as caught:
        load_fleet(path)
    message = str(caught.value)
    assert "unlock.unexpected" in message and "immediate, after, approve" in message
    assert "unlock.loop_window" in message
    assert "regions.fsn.unlock.after" in message and "10 minutes" in message


def test_after_without_a_delay_is_refused() -> None:
    _, problems = parse_policy({"unexpected": "after"}, "unlock")
    assert problems == [("unlock.after", 'unexpected = "after" needs a delay',
                         'add e.g. after = "10 minutes"')]


def test_unknown_policy_key_is_refused() -> None:
    _, problems = parse_policy({"delay": 3}, "unlock")
    assert problems[0][0] == "unlock.delay"


def test_expected_reboot_unlocks_at_once_even_under_approve() -> None:
    decision = decide(UnlockPolicy("approve"), first_seen=NOW, expected=True,
                      approved_at=None, recent_unlocks=[], now=NOW)
    assert decision.action == "unlock" and decision.reason == "expected reboot"


def test_unexpected_reboot_under_immediate_unlocks_at_once() -> None:
    assert decide(UnlockPolicy("immediate"), first_seen=NOW, expected=False, approved_at=None,
                  recent_unlocks=[], now=NOW).action == "unlock"


def test_unexpected_reboot_under_after_waits_until_the_delay_has_passed() -> None:
    policy = UnlockPolicy("after", after_seconds=600)
    early = decide(policy, first_seen=NOW, expected=False, approved_at=None,
                   recent_unlocks=[], now=NOW + 599)
    assert early.action == "wait" and early.not_before == NOW + 600
    assert decide(policy, first_seen=NOW, expected=False, approved_at=None,
                  recent_unlocks=[], now=NOW + 600).action == "unlock"


def test_unexpected_reboot_under_approve_waits_for_an_approval_given_during_the_boot() -> None:
    policy = UnlockPolicy("approve")
    assert decide(policy, first_seen=NOW, expected=False, approved_at=None,
                  recent_unlocks=[], now=NOW + 3600).action == "wait"
    # An approval from an earlier boot does not carry over.
    assert decide(policy, first_seen=NOW, expected=False, approved_at=NOW - 1,
                  recent_unlocks=[], now=NOW + 5).action == "wait"
    approved = decide(policy, first_seen=NOW, expected=False, approved_at=NOW + 5,
                      recent_unlocks=[], now=NOW + 6)
    assert approved.action == "unlock" and "approved" in approved.reason


def test_reboot_loop_is_held_even_when_expected() -> None:
    policy = UnlockPolicy("immediate", loop_unlocks=3, loop_window_seconds=1800)
    recent = [NOW - 1700, NOW - 900, NOW - 60]
    decision = decide(policy, first_seen=NOW, expected=True, approved_at=None,
                      recent_unlocks=recent, now=NOW)
    assert decision.action == "hold"
    assert "3 times in the last 30 minutes" in decision.reason


def test_unlocks_outside_the_window_do_not_count_towards_a_loop() -> None:
    policy = UnlockPolicy("immediate", loop_unlocks=3, loop_window_seconds=1800)
    recent = [NOW - 4000, NOW - 1900, NOW - 60]
    assert decide(policy, first_seen=NOW, expected=False, approved_at=None,
                  recent_unlocks=recent, now=NOW).action == "unlock"


def test_approval_releases_a_held_node() -> None:
    policy = UnlockPolicy("immediate", loop_unlocks=1)
    assert decide(policy, first_seen=NOW, expected=False, approved_at=NOW + 1,
                  recent_unlocks=[NOW - 10], now=NOW + 2).action == "unlock"


def test_held_boot_stays_held_when_the_loop_window_slides_past_old_unlocks() -> None:
    policy = UnlockPolicy("immediate", loop_unlocks=3, loop_window_seconds=1800)
    decision = decide(policy, first_seen=NOW, expected=False, approved_at=None,
                      recent_unlocks=[NOW - 1700], now=NOW + 3600, held=True)
    assert decision.action == "hold" and "--approve" in decision.reason
    assert decide(policy, first_seen=NOW, expected=False, approved_at=NOW + 3000,
                  recent_unlocks=[], now=NOW + 3600, held=True).action == "unlock"
