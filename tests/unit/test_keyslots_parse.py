"""Reading `cryptsetup luksDump` (LUKS2) output and the facts of `keys status`."""

from __future__ import annotations

import pytest

from clonefleet import keyslots
from clonefleet.errors import StateError
from clonefleet.state import open_store

pytestmark = pytest.mark.unit

DUMP = """LUKS header information
Version:       \t2
UUID:          \ta7ea662f-e14e-40e3-8f22-4c8cd8ed982a

Data segments:
  0: crypt
\toffset: 16777216 [bytes]

Keyslots:
  1: luks2
\tKey:        512 bits
\tPBKDF:      argon2id
\tTime cost:  4
\tMemory:     262144
  3: luks2
\tPBKDF:      argon2id
\tMemory:     65536
Tokens:
Digests:
  0: pbkdf2
\tHash:       sha256
"""


def test_active_slots_are_read_from_the_keyslots_section_only() -> None:
    assert keyslots.active_slots(DUMP) == [1, 3]  # not the data segment 0 nor digest 0


def test_a_new_slot_costs_the_memory_of_the_slot_it_replaces() -> None:
    assert keyslots.slot_memory_kib(DUMP, 1) == 262144
    assert keyslots.slot_memory_kib(DUMP, 3) == 65536
    assert keyslots.pbkdf_like(DUMP, 3) == keyslots.Pbkdf(65536)
    assert keyslots.slot_memory_kib(DUMP, 0) is None


def test_status_reports_recorded_slots_rotation_and_unknown_live_slots(tmp_path) -> None:
    store = open_store(tmp_path)
    assert keyslots.slot_status(store, "fsn-1").slots == {}
    keyslots.record_install(store, "fsn-1", at="2026-11-30T12:00:00+00:00")

    status = keyslots.slot_status(store, "fsn-1")
    status.live_slots = [0, 1, 5]

    assert status.as_dict()["slots"] == {"escrow": 0, "recovery": 1}
    assert status.has_recovery and status.unknown_slots == [5]
    assert status.rotated_at == "2026-11-30T12:00:00+00:00" and not status.rotation_pending
    store.set_fact("fsn-1", keyslots.LUKS_SLOTS, {"escrow": "zero"})
    with pytest.raises(StateError, match="luks_slots"):
        keyslots.slot_status(store, "fsn-1")


def test_secrets_must_be_single_lines() -> None:
    with pytest.raises(ValueError):
        keyslots.add_key_command("/dev/x", 1, keyslots.Pbkdf(64), "a\nb", "c")
