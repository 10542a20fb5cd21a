"""Ask the control plane to drain this node, and keep asking until it answers.

Protocol (agent → `clonefleet serve`), JSON over HTTP(S):

    POST /v1/drain
    Authorization: Bearer <the node's drain token>
    {"node": "fsn-1", "request_id": "<uuid4>", "reason": "...", "findings": [...],
     "agent": "smartwatch 0.1.0"}

Answers:
    200 {"result": "drained" | "already-drained", ...}   acknowledged: leaves the spool
    409 {"result": "refused", "reason": "..."}          the DNS map's safety rules said no
                                                         (it would empty a region): page loudly
    400/401/403/404/422                                  rejected: stays spooled, alert once
    5xx, timeouts, connection errors                     retried with backoff, stays spooled

Every request is written to the SQLite spool before the first attempt and leaves it only when
acknowledged, so a control-plane outage or an agent crash loses nothing; `request_id` makes a
repeated request harmless.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from smartwatch import __version__
from smartwatch.history import ACKNOWLEDGED, PENDING, REFUSED, History, SpoolEntry

ACK = "acknowledged"
REFUSE = "refused"
REJECT = "rejected"
RETRY = "retry"


@dataclass(frozen=True)
class DrainAnswer:
    outcome: str  # ACK | REFUSE | REJECT | RETRY
    http_status: int | None
    body: dict[str, Any]
    error: str = ""


class DrainClient:
    """Given the control plane's URL and this node's token, send drain requests."""

    def __init__(self, url: str, token: str, *, ca_file: str = "",
                 timeout: float = 90.0) -> None:
        self.url = url.rstrip("/") + "/v1/drain"
        self.token = token
        self.timeout = timeout
        self.context: ssl.SSLContext | None = None
        if url.startswith("https://"):
            self.context = ssl.create_default_context(cafile=ca_file or None)

    def send(self, payload: dict[str, Any]) -> DrainAnswer:
        request = urllib.request.Request(
            self.url, data=json.dumps(payload).encode(), method="POST",
            headers={"Authorization": f"Bearer {self.token}",
                     "Content-Type": "application/json",
                     "User-Agent": f"smartwatch/{__version__}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout,
                                        context=self.context) as response:
                return DrainAnswer(ACK, response.status, _json(response.read()))
        except urllib.error.HTTPError as error:
            body = _json(error.read())
            if error.code == 409:
                return DrainAnswer(REFUSE, error.code, body, str(body.get("reason", "")))
            if 400 <= error.code < 500 and error.code not in (408, 429):
                return DrainAnswer(REJECT, error.code, body,
                                   str(body.get("error") or body.get("result") or error.reason))
            return DrainAnswer(RETRY, error.code, body, f"HTTP {error.code}")
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            reason = getattr(error, "reason", error)
            return DrainAnswer(RETRY, None, {}, str(reason))


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class SpoolEvent:
    """Something the operators must hear about: a refusal, a rejection, an acknowledgement."""

    entry: SpoolEntry
    answer: DrainAnswer


def flush(
    history: History,
    client: DrainClient,
    *,
    attempts: int,
    backoff_seconds: float,
    max_backoff_seconds: float,
    include_refused: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> list[SpoolEvent]:
    """Send every spooled request, each up to `attempts` times with exponential backoff.

    Returns the answers worth telling operators about; entries not acknowledged stay spooled.
    """
    statuses = (PENDING, REFUSED) if include_refused else (PENDING,)
    events: list[SpoolEvent] = []
    for entry in history.spooled(statuses):
        answer = DrainAnswer(RETRY, None, {}, "not sent")
        tried = entry.attempts
        for attempt in range(max(1, attempts)):
            if attempt:
                sleep(min(max_backoff_seconds, backoff_seconds * 2 ** (attempt - 1)))
            tried += 1
            answer = client.send(entry.payload)
            if answer.outcome != RETRY:
                break
        now = clock()
        if answer.outcome == ACK:
            history.update_spool(entry.request_id, status=ACKNOWLEDGED, attempts=tried,
                                 answered_at=now, last_error="")
            events.append(SpoolEvent(entry, answer))
        elif answer.outcome == REFUSE:
            history.update_spool(entry.request_id, status=REFUSED, attempts=tried,
                                 answered_at=now, last_error=answer.error)
            events.append(SpoolEvent(entry, answer))
        else:
            history.update_spool(entry.request_id, attempts=tried, last_error=answer.error)
            if answer.outcome == REJECT:
                events.append(SpoolEvent(entry, answer))
    return events
