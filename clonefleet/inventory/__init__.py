"""Fleet definitions: `inventory/<fleet>.toml` → validated `Fleet`."""

from __future__ import annotations

from clonefleet.inventory.load import load_fleet
from clonefleet.inventory.model import Admin, Fleet, Node, Region, RoutedName, StaticNetwork

__all__ = ["Admin", "Fleet", "Node", "Region", "RoutedName", "StaticNetwork", "load_fleet"]
