"""The Debian image every node is cloned from, built once on the controller and cached."""

from __future__ import annotations

from clonefleet.image.base import BaseImage, ensure_base_image

__all__ = ["BaseImage", "ensure_base_image"]
