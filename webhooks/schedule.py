"""When a failed delivery is tried again, and what an answer means (docs/webhooks.md#retries).

Immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h after each failure, each delay
stretched or shrunk by up to a tenth at random so retries of many messages do not arrive together.
A 429 or 503 with Retry-After waits as long as the receiver asks (up to a day) instead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum

DELAYS = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
ATTEMPTS = len(DELAYS) + 1  # the first one, then one after each delay
JITTER = 0.1
MAX_RETRY_AFTER = timedelta(days=1)
TIMEOUT_S = 15.0  # a 2xx must come within this


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    GONE = "gone"  # 410: the receiver wants no more; the endpoint is disabled
    FAILED = "failed"  # out of attempts


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    next_at: datetime | None = None


def retry_after(value: str | None, now: datetime) -> timedelta | None:
    """A Retry-After header (seconds or an HTTP date) as a delay, at most a day; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        delay = timedelta(seconds=int(value))
    else:
        try:
            delay = parsedate_to_datetime(value) - now
        except (TypeError, ValueError):
            return None
    return max(timedelta(0), min(delay, MAX_RETRY_AFTER))


def judge(
    attempt: int, status: int | None, retry_after_header: str | None, now: datetime, rng: random.Random
) -> Verdict:
    """What to do after attempt number `attempt` (1 for the first) answered `status` (None: no answer)."""
    if status is not None and 200 <= status < 300:
        return Verdict(Outcome.DELIVERED)
    if status == 410:
        return Verdict(Outcome.GONE)
    if attempt >= ATTEMPTS:
        return Verdict(Outcome.FAILED)
    delay = DELAYS[attempt - 1] * (1 + rng.uniform(-JITTER, JITTER))
    if status in (429, 503):
        asked = retry_after(retry_after_header, now)
        if asked is not None:
            delay = asked
    return Verdict(Outcome.RETRY, now + delay)
