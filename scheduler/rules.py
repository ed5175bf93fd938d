"""Rules the scheduler decides by and the gateway shows, each computed here and nowhere else.

Pure functions of their arguments (no state, no clock of their own, no I/O), so the gateway may
import this module without importing the scheduler's state or service.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from base.catalog import Model


def quota_day(at: float, zone: ZoneInfo) -> date:
    """The quota day that `at` (epoch seconds) falls on, in the quota time zone."""
    return datetime.fromtimestamp(at, zone).date()


def quota_resets_at(day: date, zone: ZoneInfo) -> datetime:
    """When `day`'s quota ends: the midnight after it, in the quota time zone."""
    return datetime.combine(day + timedelta(days=1), datetime.min.time(), zone)


def plan_allows(allowed_models: Sequence[str], model: Model) -> bool:
    """Whether a plan with these allowed_models may use `model`: an ungated model is open to every
    plan; a gated one only to plans that name it (or `*`)."""
    return not model.gated or "*" in allowed_models or model.name in allowed_models


def estimated_seconds(
    position: int | None, capable_slots: int, typical_seconds: float, completions_per_s: float | None = None
) -> float:
    """Time until an unfinished job completes: its own run, after, for a waiting job, as many slots
    freeing as there are jobs ahead of it (`position`; None once it runs).

    The slots that serve its model free at `completions_per_s`, the rate observed while they had a
    backlog (`ServiceRate`: dispatch and reporting included, which a model's run time alone misses),
    or, before any was observed, at slots / run time. The first of them frees after a fraction
    slots / (slots + 1) of an interval (their runs are staggered), each later one a whole interval.
    """
    if position is None:
        return round(typical_seconds, 3)
    slots = max(capable_slots, 1)
    capacity = slots / max(typical_seconds, 1e-3)
    rate = min(completions_per_s, capacity) if completions_per_s else capacity
    return round((position + slots / (slots + 1)) / rate + typical_seconds, 3)


@dataclass
class ServiceRate:
    """Completions per second of one model, observed while jobs waited for it (an idle model's rate
    is its arrivals', not what its slots can do), smoothed over about `tau_s` seconds of backlog.

    Fed the model's running count of completions now and then (the scheduler and each gateway once a
    second); samples shorter than `min_sample_s` accumulate. Only a stretch backlogged at both ends
    counts: one in which the queue ran dry also counts the time nothing waited, a rate too low.
    """

    tau_s: float = 30.0
    min_sample_s: float = 1.0
    per_s: float | None = None
    _at: float | None = None
    _count: int = 0
    _backlogged: bool = False

    def observe(self, now: float, completed: int, backlogged: bool) -> None:
        if self._at is None or completed < self._count:
            self._at, self._count, self._backlogged = now, completed, backlogged
            return
        elapsed = now - self._at
        if elapsed < self.min_sample_s:
            self._backlogged = self._backlogged and backlogged
            return
        if backlogged and self._backlogged and (completed > self._count or self.per_s is not None):
            sample = (completed - self._count) / elapsed
            weight = 1 - math.exp(-elapsed / self.tau_s)
            self.per_s = sample if self.per_s is None else self.per_s + weight * (sample - self.per_s)
        self._at, self._count, self._backlogged = now, completed, backlogged
