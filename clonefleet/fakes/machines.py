"""What a fake API's "servers" run on: the machine room behind the HTTP front.

A fake decides *when* a server powers on, resets into rescue or boots its disk (after its
action or task has progressed, as the real API does); the machine room makes it happen.
`RecordingMachines` only records (contract tests); `LabMachines` boots lab VMs and records
where their SSH ports really answer, so drivers reach them through `ProviderConfig.route`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Literal, Protocol

BootMode = Literal["rescue", "disk"]


class Machines(Protocol):
    def power_on(self, server: str, mode: BootMode, ssh_keys: list[str]) -> None:
        """Start (or restart) `server` into `mode`; `ssh_keys` authorize the rescue root."""

    def power_off(self, server: str) -> None: ...

    def running(self, server: str) -> BootMode | None: ...


@dataclass
class RecordingMachines:
    """Keeps what was asked, in order; nothing boots. For contract tests."""

    calls: list[tuple[str, str, str]] = field(default_factory=list)
    state: dict[str, BootMode] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def power_on(self, server: str, mode: BootMode, ssh_keys: list[str]) -> None:
        with self.lock:
            self.calls.append(("power_on", server, mode))
            self.state[server] = mode

    def power_off(self, server: str) -> None:
        with self.lock:
            self.calls.append(("power_off", server, ""))
            self.state.pop(server, None)

    def running(self, server: str) -> BootMode | None:
        with self.lock:
            return self.state.get(server)
