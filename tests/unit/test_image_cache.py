"""The image cache: a new image configuration goes to its own folder, and an older image is
reclaimed only once nothing has used it for a week (a running lab may still boot from it)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from clonefleet.image import base

pytestmark = pytest.mark.unit


def image(folder: Path, key: str, last_used: float | None) -> Path:
    directory = folder / f"debian-{base.SUITE}-{key}"
    directory.mkdir(parents=True)
    (directory / "image.json").write_text("{}")
    if last_used is not None:
        (directory / base.LAST_USED).touch()
        os.utime(directory / base.LAST_USED, (last_used, last_used))
    return directory


def test_only_images_unused_for_a_week_are_pruned(tmp_path: Path) -> None:
    now = time.time()
    current = image(tmp_path, "new", now)
    in_use = image(tmp_path, "running", now - 3600)  # a benchmark started an hour ago
    built_today = image(tmp_path, "older", None)  # built by a version without the stamp
    stale = image(tmp_path, "stale", now - 8 * 24 * 3600)

    base._prune_old_images(current, lambda message: None)

    assert current.exists() and in_use.exists() and built_today.exists()
    assert not stale.exists()


def test_the_full_clone_services_are_part_of_the_image_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    key = base.image_key()
    monkeypatch.setattr(base, "FULL_CLONE_UNITS", base.FULL_CLONE_UNITS[:-1])
    assert base.image_key() != key
