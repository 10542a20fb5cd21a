"""Helpers shared by the Hetzner Cloud fake and driver tests (fixtures live in each file so
other providers' test files can add their own without a shared conftest)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from clonefleet.fakes.hcloud import DEFAULT_TOKEN, HcloudFake, make_server
from clonefleet.fakes.machines import RecordingMachines


@contextmanager
def running_fake(machines: RecordingMachines, monkeypatch: pytest.MonkeyPatch,
                 **options: object) -> Iterator[HcloudFake]:
    """The fake on a free loopback port; actions take 10 ms unless told otherwise. The hcloud
    library's own retry sleeps (1-60 s for 429/502/504) are made instant."""
    import hcloud._client

    monkeypatch.setattr(hcloud._client, "time", SimpleNamespace(sleep=lambda seconds: None))
    monkeypatch.setenv("HCLOUD_TOKEN", DEFAULT_TOKEN)
    settings: dict[str, object] = {"action_seconds": 0.01, "tick": 0.005, **options}
    fake = make_server(machines, **settings).start()
    try:
        yield fake
    finally:
        fake.shutdown()
