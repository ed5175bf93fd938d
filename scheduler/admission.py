"""Admission: whether a submitted job is accepted, as a pure function of what the scheduler knows.

Two steps, because between them the scheduler may register the user (a frontend's first submit for
someone): `quote` reads only the command and the catalog, `admit` the user's standing on their
plan and the fleet. Neither changes anything; the caller records what the answer implies (the
request in the rate window, the job's events).

Here too: every code a scheduler refuses with (`RefusalCode`, for admission and every other
command), and a refusal as data (`Refused`). The scheduler speaks no HTTP; the gateway alone turns
a code into an HTTP status, in one table (`gateway.decisions.HTTP_STATUS`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol
from zoneinfo import ZoneInfo

from base.catalog import Catalog, Quote, QuoteRefused
from events.types import PlanDefined
from scheduler import rules
from streams.messages import Decision, RateLimit, SubmitJob

RATE_WINDOW_S = 60.0  # a plan's requests_per_minute counts the submits of this sliding window


class RefusalCode(StrEnum):
    """Every code a scheduler's refusal carries (a `Decision.code`)."""

    # Submitting a job: admission (scheduler.admission) and the catalog's quote.
    JOB_ID_CONFLICT = "JOB_ID_CONFLICT"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"  # the same Idempotency-Key with another request
    SUBMIT_EXPIRED = "SUBMIT_EXPIRED"
    UNKNOWN_CAPABILITY = "UNKNOWN_CAPABILITY"
    UNKNOWN_MODEL = "UNKNOWN_MODEL"
    VALIDATION_ERROR = "VALIDATION_ERROR"  # a parameter the model cannot take (base.catalog.ParamError)
    UNKNOWN_USER = "UNKNOWN_USER"
    RATE_LIMITED = "RATE_LIMITED"
    MODEL_NOT_ALLOWED = "MODEL_NOT_ALLOWED"
    RESOLUTION_TOO_HIGH = "RESOLUTION_TOO_HIGH"
    TOO_MANY_QUEUED_JOBS = "TOO_MANY_QUEUED_JOBS"
    NO_CAPABLE_WORKER = "NO_CAPABLE_WORKER"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    # Cancelling a job.
    JOB_NOT_FOUND = "JOB_NOT_FOUND"
    JOB_TERMINAL = "JOB_TERMINAL"
    # Accounts: users, plans, keys.
    UNKNOWN_PLAN = "UNKNOWN_PLAN"
    INVALID_PLAN = "INVALID_PLAN"
    USER_NOT_FOUND = "USER_NOT_FOUND"
    KEY_NOT_FOUND = "KEY_NOT_FOUND"
    TOO_MANY_KEYS = "TOO_MANY_KEYS"
    # Uploads.
    UPLOAD_TOO_LARGE = "UPLOAD_TOO_LARGE"
    UPLOAD_QUOTA_EXCEEDED = "UPLOAD_QUOTA_EXCEEDED"
    UPLOAD_NOT_FOUND = "UPLOAD_NOT_FOUND"
    # Webhook endpoints.
    WEBHOOK_NOT_FOUND = "WEBHOOK_NOT_FOUND"
    # Any command the scheduler set aside: one it could not store, one whose handler failed.
    UNSTORABLE_INPUT = "UNSTORABLE_INPUT"
    COMMAND_FAILED = "COMMAND_FAILED"


@dataclass(frozen=True, kw_only=True)
class Refused:
    """A refusal: its code, a sentence for the person, and what the client may act on."""

    code: RefusalCode
    detail: str
    rate: RateLimit | None = None  # the user's rate window after this request
    retry_after: int | None = None  # seconds, for a refusal worth retrying later
    counted: bool = False  # the request got past the rate check, so it counts against the rate window

    def decision(self) -> Decision:
        """The answer sent to the command's sender."""
        return Decision(
            ok=False, code=self.code.value, detail=self.detail, rate=self.rate, retry_after=self.retry_after
        )


class FleetView(Protocol):
    """What admission needs to know of the workers."""

    @property
    def known(self) -> bool:
        """Whether the workers are known yet (a new leader has read the workers bucket)."""
        ...

    def can_run(self, model: str, side: int) -> bool:
        """Whether a worker serves `model` at this size (longest side in pixels): one online, or one
        lost so recently that it is probably coming back (the job then waits for it)."""
        ...


@dataclass(frozen=True, kw_only=True)
class Standing:
    """A registered user's position as the command finds it."""

    plan: PlanDefined
    requests: Sequence[float]  # the user's earlier submit times (epoch seconds), oldest first
    queued: int  # the user's jobs waiting for a worker
    used: float  # tokens charged on today's quota day
    reserved: float  # tokens held by the user's unfinished jobs of today


@dataclass(frozen=True, kw_only=True)
class Admitted:
    """The job is accepted as quoted, on this plan."""

    quote: Quote
    plan: PlanDefined
    rate: RateLimit  # the user's rate window, this request counted
    counted: bool = True  # the request counts against the rate window


def quote(cmd: SubmitJob, catalog: Catalog, now: float) -> Quote | Refused:
    """The catalog's quote for the command, or why it cannot have one: it came after its deadline
    (its sender gave up on it), or the catalog cannot serve it as asked."""
    if datetime.fromtimestamp(now, UTC) > cmd.deadline:
        return Refused(
            code=RefusalCode.SUBMIT_EXPIRED, detail="the submit arrived after its deadline; nothing was created"
        )
    try:
        return catalog.quote(cmd.capability, cmd.model, cmd.params)
    except QuoteRefused as exc:
        return Refused(code=RefusalCode(exc.code), detail=exc.message)


def rate(plan: PlanDefined, requests: Sequence[float], now: float) -> RateLimit:
    """The user's rate window before this request: the submits of the sliding minute before `now`."""
    start = 0
    while start < len(requests) and now - requests[start] >= RATE_WINDOW_S:
        start += 1
    count = len(requests) - start
    reset = RATE_WINDOW_S - (now - requests[start]) if count else RATE_WINDOW_S
    return RateLimit(
        limit=plan.requests_per_minute,
        remaining=max(0, plan.requests_per_minute - count),
        reset_seconds=round(reset, 3),
    )


def admit(
    quote: Quote, standing: Standing | None, fleet: FleetView, *, now: float, zone: ZoneInfo, typical_seconds: float
) -> Admitted | Refused:
    """Admit a quoted job for a user, or refuse it with the first rule it breaks, in this order: the
    user must be registered, within the plan's rate, allowed the model and the size, below the plan's
    waiting jobs, servable by a worker online (once the workers are known) and within today's tokens.

    `typical_seconds` is how long a job of the model takes (when to retry a full queue); `zone` is
    the quota time zone.
    """
    if standing is None:
        return Refused(code=RefusalCode.UNKNOWN_USER, detail="user is not registered")
    plan, model = standing.plan, quote.model
    window = rate(plan, standing.requests, now)
    if window.remaining <= 0:
        return Refused(
            code=RefusalCode.RATE_LIMITED,
            rate=window,
            retry_after=math.ceil(window.reset_seconds),
            detail=f"more than {plan.requests_per_minute} requests in a minute on the {plan.name} plan; "
            f"retry in {math.ceil(window.reset_seconds)}s",
        )
    window = RateLimit(limit=window.limit, remaining=window.remaining - 1, reset_seconds=window.reset_seconds)
    if not rules.plan_allows(plan.allowed_models, model):
        allowed = ", ".join(plan.allowed_models) or "none"
        return Refused(
            code=RefusalCode.MODEL_NOT_ALLOWED,
            rate=window,
            counted=True,
            detail=f"the {plan.name} plan does not include {model.name} (it includes {allowed}); upgrade to use it",
        )
    if quote.side > plan.max_resolution:
        return Refused(
            code=RefusalCode.RESOLUTION_TOO_HIGH,
            rate=window,
            counted=True,
            detail=f"{quote.width}x{quote.height} is above the {plan.name} plan's {plan.max_resolution} px per side",
        )
    if standing.queued >= plan.max_queued_jobs:
        return Refused(
            code=RefusalCode.TOO_MANY_QUEUED_JOBS,
            rate=window,
            counted=True,
            retry_after=max(1, math.ceil(typical_seconds)),
            detail=f"{standing.queued} jobs already wait (the {plan.name} plan allows "
            f"{plan.max_queued_jobs} waiting and {plan.max_concurrent_jobs} running); "
            "retry when one has started",
        )
    if fleet.known and not fleet.can_run(model.name, quote.side):
        size = f" at {quote.width}x{quote.height}" if quote.width else ""
        return Refused(
            code=RefusalCode.NO_CAPABLE_WORKER,
            rate=window,
            counted=True,
            detail=f"no worker online can run {model.name}{size}, and none has lately",
        )
    limit = plan.daily_token_limit
    if limit is not None and standing.used + standing.reserved + quote.cost > limit + 1e-9:
        resets = rules.quota_resets_at(rules.quota_day(now, zone), zone).astimezone(UTC)
        left = max(0.0, limit - standing.used - standing.reserved)
        return Refused(
            code=RefusalCode.QUOTA_EXCEEDED,
            rate=window,
            counted=True,
            retry_after=max(1, math.ceil(resets.timestamp() - now)),
            detail=f"this job costs {quote.cost:g} tokens and {left:g} of today's {limit} are left "
            f"({standing.used:g} used, {standing.reserved:g} held by unfinished jobs); "
            f"the quota resets at {resets.isoformat()}",
        )
    return Admitted(quote=quote, plan=plan, rate=window)
