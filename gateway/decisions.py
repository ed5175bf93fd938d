"""Sending a command to the scheduler and turning its decision into an answer.

Every route that changes something sends one command and waits for the scheduler's decision,
which comes once the outcome is committed: no decision in time is a 503 the client may retry, and
a refusal is a problem with the scheduler's code (and its rate or retry headers).
"""

from __future__ import annotations

import math

from gateway.deps import Services
from gateway.errors import Problem
from projector.queries import wait_for_projection
from streams.commands import NoDecision
from streams.messages import Decision


def rate_headers(decision: Decision) -> dict[str, str]:
    """RateLimit-* (IETF httpapi draft, as widely deployed) and Retry-After from a decision."""
    headers = {}
    if decision.rate is not None:
        headers = {"RateLimit-Limit": str(decision.rate.limit), "RateLimit-Remaining": str(decision.rate.remaining),
                   "RateLimit-Reset": str(math.ceil(decision.rate.reset_seconds))}
    if decision.retry_after is not None:
        headers["Retry-After"] = str(decision.retry_after)
    return headers


def refusal(decision: Decision, **extra: object) -> Problem:
    return Problem(decision.status, decision.code or "REJECTED", decision.detail or "the scheduler refused it",
                   headers=rate_headers(decision) or None, **extra)


async def decide(services: Services, subject: str, command: object, *, msg_id: str,
                 unconfirmed: str = "the scheduler did not confirm in time") -> Decision:
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
