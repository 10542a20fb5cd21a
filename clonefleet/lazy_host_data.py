"""Host data made only when a deploy reads it: the services' `LAZY_HOST_DATA`, for pyinfra.

Given to pyinfra as the inventory's override data (the first layer `host.data` looks in), so
a deploy reads a plain value, exactly as from any other host data, and runs unchanged from
the plain pyinfra CLI. A value is made once per node, the first time a deploy reads its key
on that node, which is how a drain token is issued only by a deploy that installs it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# node name -> the value (None: leave the key to its default)
Maker = Callable[[str], Any]


class LazyHostData(dict[str, Any]):
    """pyinfra override data: `data[key]` makes the value for the host being prepared."""

    def __init__(self, makers: Mapping[str, Maker]) -> None:
        super().__init__()
        self.makers = dict(makers)
        self.made: dict[str, dict[str, Any]] = {}  # node -> key -> value

    def __bool__(self) -> bool:
        return True  # pyinfra replaces falsy override data with {}

    def __contains__(self, key: object) -> bool:
        try:
            self[key]
        except KeyError:
            return False
        return True

    def __getitem__(self, key: object) -> Any:
        from pyinfra.context import ctx_host

        maker = self.makers.get(key) if isinstance(key, str) else None
        host = ctx_host.get()  # type: ignore[no-untyped-call]
        if maker is None or host is None:
            raise KeyError(key)
        values = self.made.setdefault(host.name, {})
        if key not in values:
            values[str(key)] = maker(host.name)
        if values[str(key)] is None:
            raise KeyError(key)
        return values[str(key)]

    def values_for(self, node: str) -> list[Any]:
        """What was made for `node` (to keep it out of any output)."""
        return [value for value in self.made.get(node, {}).values() if value is not None]
