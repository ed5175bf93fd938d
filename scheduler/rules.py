"""Rules the scheduler decides by and the gateway shows, each computed here and nowhere else.

Pure functions of their arguments (no state, no clock of their own, no I/O), so the gateway may
import this module without importing the scheduler's state or service.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def estimated_seconds(position: int | None, capable_slots: int, typical_seconds: float) -> float:
    """Time until an unfinished job completes: the jobs ahead of it (`position`; None once it runs)
    run in waves as wide as the slots online that serve its model, each wave the model's typical time."""
    waves = (position or 0) // max(capable_slots, 1) + 1
    return round(waves * typical_seconds, 3)
