"""Send notices: through apprise to the alert URLs, or to stderr without any.

Apart from the rest of smartwatch (no pySMART, nothing but apprise and the standard
library), so the control plane's senders use it too, including an unlocker on a node,
which ships smartwatch without the agent's dependencies.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Notice:
    kind: str
    key: str
    severity: str  # "warning" | "critical" | "ok"
    title: str
    body: str
    value: int | None = None


class Notifier(Protocol):
    def send(self, notice: Notice) -> bool: ...


class AppriseNotifier:
    """Sends notices to every apprise URL configured (mailto://, json://, ntfy://, ...)."""

    def __init__(self, urls: tuple[str, ...] | list[str], timeout: float = 20.0) -> None:
        import apprise

        # apprise logs every unusable URL and failed send itself (warning and error levels);
        # smartwatch reports the outcome in one line of its own.
        logging.getLogger("apprise").setLevel(logging.CRITICAL)
        self.urls = list(urls)
        self.timeout = timeout
        self.apprise = apprise.Apprise()
        for url in self.urls:
            if not self.apprise.add(url):
                raise ValueError(f"apprise does not understand the alert URL {url!r}")

    def send(self, notice: Notice) -> bool:
        import apprise

        notify_type = {"critical": apprise.NotifyType.FAILURE,
                       "warning": apprise.NotifyType.WARNING,
                       "ok": apprise.NotifyType.SUCCESS}.get(notice.severity,
                                                             apprise.NotifyType.INFO)
        return bool(self.apprise.notify(body=notice.body, title=notice.title,
                                        notify_type=notify_type))


class LogNotifier:
    """Without alert URLs, notices go to stderr (the journal under systemd)."""

    def send(self, notice: Notice) -> bool:
        sys.stderr.write(f"{notice.title}\n")
        return True
