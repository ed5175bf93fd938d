"""Trying the messages that are due, and recording every attempt.

A message is tried when its time comes; each attempt is signed afresh (its own timestamp, the
message's stable webhook-id) and recorded with its status, latency and the start of the answer,
in the same transaction that says when the message is tried next. A service killed between
sending and recording sends the message again after its restart, with the same webhook-id, which
is how a receiver recognises the duplicate (docs/webhooks.md#delivery-guarantees).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg

from gateway.webhook_secrets import SealError, SecretBox
from streams.webhook_messages import DeliveryAttempt
from webhooks import metrics, signing, store
from webhooks.client import Sender
from webhooks.intake import Endpoints
from webhooks.schedule import Outcome, judge

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
# An endpoint whose message ran out of attempts (over a day of them) and which answered no other
# message with a 2xx for this long is disabled, with the reason for its owner to read.
FAILING_FOR = timedelta(days=1)
# (endpoint id, owner, reason): stop delivering to an endpoint (a command to the scheduler).
Disable = Callable[[uuid.UUID, uuid.UUID, str], Awaitable[None]]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Deliverer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        endpoints: Endpoints,
        sender: Sender,
        box: SecretBox,
        disable: Disable,
        *,
        clock: Clock = utc_now,
        rng: random.Random | None = None,
        concurrency: int = 16,
    ) -> None:
        self.pool = pool
        self.endpoints = endpoints
        self.sender = sender
        self.box = box
        self.disable = disable
        self.clock = clock
        self.rng = rng or random.Random()
        self._slots = asyncio.Semaphore(concurrency)

    async def deliver_due(self) -> int:
        """Try every message due now, at most `concurrency` at once; returns how many were tried."""
        async with self.pool.acquire() as conn:
            due = await store.due(conn, self.clock())
        await asyncio.gather(*(self._guarded(m) for m in due))
        return len(due)

    async def _guarded(self, message: store.Due) -> None:
        async with self._slots:
            try:
                await self.attempt(message)
            except Exception:  # one message's trouble must not stop the others
                log.exception("webhooks: attempt of %s failed", message.id)

    def _where(self, message: store.Due, now: datetime) -> tuple[str, list[str]] | None:
        """The URL and the secrets that sign for a message's receiver; None when it takes no more."""
        if message.target.startswith("job:"):
            assert message.url is not None
            return message.url, [self.box.job_secret(message.user_id)]
        endpoint = self.endpoints.by_id.get(uuid.UUID(message.target))
        if endpoint is None or endpoint.deleted or not endpoint.enabled:
            return None
        secrets = [self.box.open(endpoint.secret_sealed)]
        if endpoint.previous_sealed and endpoint.previous_expires_at and endpoint.previous_expires_at > now:
            secrets.append(self.box.open(endpoint.previous_sealed))
        return endpoint.url, secrets

    async def attempt(self, message: store.Due) -> None:
        now = self.clock()
        try:
            where = self._where(message, now)
        except SealError:
            log.error("webhooks: the secret of %s was sealed with another key", message.target)
            where = None
        if where is None:
            async with self.pool.acquire() as conn:
                await store.cancel_pending(conn, message.target)
            return
        url, secrets = where
        headers = signing.headers(secrets, message.id, int(now.timestamp()), message.body)
        answer = await self.sender.post(url, headers, message.body)
        number = message.attempts + 1
        verdict = judge(number, answer.status, answer.retry_after, self.clock(), self.rng)
        state = {Outcome.DELIVERED: "delivered", Outcome.RETRY: "pending"}.get(verdict.outcome, "failed")
        metrics.attempted(message.target, verdict.outcome.value, answer.latency_ms)
        attempt = DeliveryAttempt(
            attempt=number,
            at=now,
            status=answer.status,
            latency_ms=answer.latency_ms,
            response_excerpt=answer.excerpt,
            error=answer.error,
        )
        async with self.pool.acquire() as conn:
            await store.record(conn, message.id, attempt, state, verdict.next_at)
            if message.target.startswith("job:"):
                return
            endpoint_id = uuid.UUID(message.target)
            if verdict.outcome is Outcome.GONE:
                await self.disable(endpoint_id, message.user_id, "the receiver answered 410 Gone")
            elif verdict.outcome is Outcome.FAILED:
                last = await store.last_success(conn, message.target)
                if last is None or last < now - FAILING_FOR:
                    since = "ever" if last is None else f"since {last:%Y-%m-%d %H:%M} UTC"
                    await self.disable(
                        endpoint_id,
                        message.user_id,
                        f"no delivery succeeded {since}: {number} attempts of {message.id} failed, "
                        f"the last one with {answer.status or answer.error}",
                    )
