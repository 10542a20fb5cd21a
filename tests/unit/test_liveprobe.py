"""How `status --live` turns its probes into one word, and when it asks the provider: pure
classification (the probes themselves run against real servers in
tests/integration/test_live_status.py)."""

from __future__ import annotations

import pytest

from clonefleet.errors import ProviderError
from clonefleet.liveprobe import Answer, PortProbe, classify
from clonefleet.ssh import generate_ed25519

pytestmark = pytest.mark.unit

PINNED = " ".join(generate_ed25519().public_line.split()[:2])
OTHER = " ".join(generate_ed25519().public_line.split()[:2])


def sshd(answer: Answer, presented: str = "") -> PortProbe:
    return PortProbe("sshd", "192.0.2.1", 22, answer, presented, (PINNED,))


def dropbear(answer: Answer, presented: str = "") -> PortProbe:
    return PortProbe("dropbear", "192.0.2.1", 2222, answer, presented, (PINNED,))


def never_asked() -> str:
    raise AssertionError("the provider was asked although a port answered")


def test_a_mismatch_on_either_port_wins_over_a_pinned_answer_on_the_other() -> None:
    found = classify("fsn-1", [sshd("pinned", PINNED), dropbear("other-key", OTHER)],
                     never_asked)
    assert found.live == "host-key-mismatch"
    assert "dropbear at 192.0.2.1:2222" in found.detail and "keys repin fsn-1" in found.detail


@pytest.mark.parametrize(("probes", "live"), [
    ([sshd("pinned", PINNED), dropbear("silent")], "sshd"),
    ([sshd("silent"), dropbear("pinned", PINNED)], "initramfs"),
    ([sshd("unpinned", OTHER), dropbear("silent")], "unpinned"),
    ([], "unprovisioned"),
])
def test_answers_decide_without_asking_the_provider(probes: list[PortProbe], live: str) -> None:
    assert classify("fsn-1", probes, never_asked).live == live


@pytest.mark.parametrize(("provider", "live"), [("off", "off"), ("disk", "unreachable"),
                                                ("starting", "unreachable")])
def test_silence_is_what_the_provider_says(provider: str, live: str) -> None:
    found = classify("fsn-1", [sshd("silent"), dropbear("silent")], lambda: provider)
    assert (found.live, found.provider_status) == (live, provider)


def test_a_provider_that_cannot_be_asked_makes_a_silent_node_unreachable() -> None:
    def failing() -> str:
        raise ProviderError("cannot reach https://api.hetzner.cloud/v1")

    found = classify("fsn-1", [sshd("silent"), dropbear("silent")], failing)
    assert found.live == "unreachable" and found.provider_status == "unknown"
    assert "cannot be asked: cannot reach https://api.hetzner.cloud/v1" in found.detail
