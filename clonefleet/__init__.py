"""clonefleet: a fleet of identical, encrypted bare-metal nodes."""

from __future__ import annotations

__version__ = "0.1.0"
