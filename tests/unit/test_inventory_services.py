"""[services.NAME] tables: checked against each service's declared settings, defaults filled."""

from __future__ import annotations

from pathlib import Path

import pytest
from fleet_text import FSN, FleetNode, fleet_toml

from clonefleet.errors import InventoryError, InventoryErrors
from clonefleet.inventory import load_fleet
from clonefleet.providers.registry import Setting
from clonefleet.services import registry

pytestmark = pytest.mark.unit

FLEET = fleet_toml("t", "fleet.example.com", [FSN], [FleetNode("n1", "fsn", "SER-1")])


@pytest.fixture
def demo_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.SETTINGS, "demo", {
        "port": Setting(int, "listen port", default=8080),
        "mode": Setting(str, "how", default="fast", choices=("fast", "safe")),
    })


def _load(tmp_path: Path, extra: str) -> object:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET + extra)
    return load_fleet(path)


@pytest.mark.usefixtures("demo_service")
def test_defaults_fill_a_missing_table_and_given_values_win(tmp_path: Path) -> None:
    fleet = _load(tmp_path, "")
    assert fleet.services["demo"] == {"port": 8080, "mode": "fast"}  # type: ignore[attr-defined]
    fleet = _load(tmp_path, '[services.demo]\nport = 9000\nmode = "safe"\n')
    assert fleet.services["demo"] == {"port": 9000, "mode": "safe"}  # type: ignore[attr-defined]


@pytest.mark.usefixtures("demo_service")
def test_unknown_services_keys_wrong_types_and_choices_are_each_one_line(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match=r"services\.nope: unknown key"):
        _load(tmp_path, "[services.nope]\n")
    with pytest.raises(InventoryErrors) as errors:
        _load(tmp_path, '[services.demo]\nport = "x"\nmode = "slow"\ncolour = 1\n')
    text = str(errors.value)
    assert "services.demo.port: expected number, got str" in text
    assert "services.demo.colour: unknown key" in text
    assert "services.demo.mode: 'slow' is not one of fast, safe" in text
