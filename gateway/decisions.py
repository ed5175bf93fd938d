"""Sending a command to the scheduler and turning its decision into an answer.

Every route that changes something sends one command and waits for the scheduler's decision,
which comes once the outcome is committed: no decision in time is a 503 the client may retry, and
a refusal is a problem with the scheduler's code (and its rate or retry headers).
"""

from __future__ import annotations

import math

from base.catalog import QuoteRefused
from gateway.deps import Services
from gateway.errors import Problem
from projector.queries import wait_for_projection
from scheduler.admission import RefusalCode
from streams.commands import NoDecision
from streams.messages import Decision


def rate_headers(decision: Decision) -> dict[str, str]:
    """RateLimit-* (IETF httpapi draft, as widely deployed) and Retry-After from a decision."""
    headers = {}
    if decision.rate is not None:
        headers = {
            "RateLimit-Limit": str(decision.rate.limit),
            "RateLimit-Remaining": str(decision.rate.remaining),
            "RateLimit-Reset": str(math.ceil(decision.rate.reset_seconds)),
        }
    if decision.retry_after is not None:
        headers["Retry-After"] = str(decision.retry_after)
    return headers


# The HTTP status of each refusal: the one place a scheduler's code becomes HTTP.
HTTP_STATUS: dict[RefusalCode, int] = {
    RefusalCode.JOB_ID_CONFLICT: 409,
    RefusalCode.IDEMPOTENCY_KEY_REUSED: 422,
    RefusalCode.SUBMIT_EXPIRED: 503,
    RefusalCode.UNKNOWN_CAPABILITY: 422,
    RefusalCode.UNKNOWN_MODEL: 422,
    RefusalCode.VALIDATION_ERROR: 422,
    RefusalCode.UNKNOWN_USER: 401,
    RefusalCode.RATE_LIMITED: 429,
    RefusalCode.MODEL_NOT_ALLOWED: 403,
    RefusalCode.RESOLUTION_TOO_HIGH: 403,
    RefusalCode.TOO_MANY_QUEUED_JOBS: 429,
    RefusalCode.NO_CAPABLE_WORKER: 503,
    RefusalCode.QUOTA_EXCEEDED: 429,
    RefusalCode.JOB_NOT_FOUND: 404,
    RefusalCode.JOB_TERMINAL: 409,
    RefusalCode.UNKNOWN_PLAN: 422,
    RefusalCode.INVALID_PLAN: 422,
    RefusalCode.USER_NOT_FOUND: 404,
    RefusalCode.KEY_NOT_FOUND: 404,
    RefusalCode.TOO_MANY_KEYS: 409,
    RefusalCode.UPLOAD_TOO_LARGE: 413,
    RefusalCode.UPLOAD_QUOTA_EXCEEDED: 429,
    RefusalCode.UPLOAD_NOT_FOUND: 404,
    RefusalCode.WEBHOOK_NOT_FOUND: 404,
    RefusalCode.UNSTORABLE_INPUT: 422,
    RefusalCode.COMMAND_FAILED: 500,
}


def http_status(code: str | None) -> int:
    """The HTTP status of a refusal's code; 500 for a code this gateway does not know (a newer scheduler's)."""
    try:
        return HTTP_STATUS[RefusalCode(code or "")]
    except ValueError:  # not a RefusalCode
        return 500


def refusal(decision: Decision, **extra: object) -> Problem:
    return Problem(
        http_status(decision.code),
        decision.code or "REJECTED",
        decision.detail or "the scheduler refused it",
        headers=rate_headers(decision) or None,
        **extra,
    )


def quote_refusal(exc: QuoteRefused) -> Problem:
    """A request the catalog cannot serve, refused at the gateway with the scheduler's code and status."""
    return Problem(http_status(exc.code), exc.code, exc.message)


async def decide(
    services: Services,
    subject: str,
    command: object,
    *,
    msg_id: str,
    unconfirmed: str = "the scheduler did not confirm in time",
) -> Decision:
    """The scheduler's decision on `command`, refusals included; 503 when none comes in time."""
    try:
        return await services.bus.send(subject, command, msg_id=msg_id, timeout=services.settings.submit_timeout_s)
    except NoDecision:
        raise Problem(503, "SCHEDULER_UNAVAILABLE", unconfirmed, headers={"Retry-After": "1"}) from None


async def carried_out(services: Services, subject: str, command: object, *, msg_id: str) -> Decision:
    """Like `decide`, but a refusal is raised, and the answer waits until the read models show the
    change (so the client's next read sees it)."""
    decision = await decide(services, subject, command, msg_id=msg_id)
    if not decision.ok:
        raise refusal(decision)
    await wait_for_projection(services.pool, decision.seq, timeout=5)
    return decision
