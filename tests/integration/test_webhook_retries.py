"""The retry schedule, on a test clock against a real receiver and PostgreSQL: a receiver that
answers 500 three times and then 200 gets the message on the fourth try, 5 s, 5 min and 30 min
(each give or take a tenth) after the failures; Retry-After is honoured; the webhook-id never
changes; a message out of attempts disables its endpoint with a reason."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta

import standardwebhooks

from base import db
from base.addresses import Allowlist
from gateway.webhook_secrets import SecretBox
from tests.webhook_receiver import Receiver, receiving
from webhooks import store
from webhooks.client import Sender
from webhooks.delivery import Deliverer
from webhooks.intake import Endpoint, Endpoints, message_id
from webhooks.schedule import ATTEMPTS, DELAYS, JITTER

BOX = SecretBox("tests-key")


class Clock:
    def __init__(self) -> None:
        # Now, not at import: receivers check a delivery's timestamp against the real clock
        # (Standard Webhooks allows 5 minutes), and a long test run imports this module early.
        self.start = self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


async def _message(conn: object, target: str, url: str | None, user_id: uuid.UUID, at: datetime) -> str:
    """A message due at `at`: the test clock's now (the real clock may have passed a second since)."""
    mid = message_id(target, uuid.uuid4().hex)
    new = store.NewMessage(
        id=mid,
        target=target,
        user_id=user_id,
        url=url,
        job_id=None,
        event_type="job.completed",
        body=b'{"type":"job.completed"}',
        created_at=at,
    )
    await store.add(conn, [new], None)  # type: ignore[arg-type]
    return mid


def _sender() -> Sender:
    return Sender(allow_http=True, allowlist=Allowlist(["127.0.0.1"]))


async def _attempts(conn: object, target: str) -> list:  # type: ignore[type-arg]
    (delivery,) = await store.deliveries(conn, target, 10)  # type: ignore[arg-type]
    return [delivery, *delivery.attempts]


async def test_500_three_times_then_200_is_delivered_on_the_fourth_try_at_the_scheduled_times(
    database_url: str,
) -> None:
    clock, user = Clock(), uuid.uuid4()
    async with receiving(Receiver(statuses=[500, 500, 500, 200])) as receiver, db.pool(database_url) as pool:
        deliverer = Deliverer(pool, Endpoints(), _sender(), BOX, _no_disable, clock=clock, rng=random.Random(7))
        target = f"job:{uuid.uuid4()}"
        await asyncio.sleep(1.0)  # the real clock passes the test clock's second, as it did in one CI run
        async with pool.acquire() as conn:
            mid = await _message(conn, target, f"{receiver.url}/h", user, clock.now)
        assert await deliverer.deliver_due() == 1  # immediately
        standardwebhooks.Webhook(BOX.job_secret(user)).verify(receiver.received[0].body, receiver.received[0].headers)
        for failed, delay in enumerate(DELAYS[:3], start=1):
            async with pool.acquire() as conn:
                delivery, *attempts = await _attempts(conn, target)
            assert len(attempts) == failed and attempts[-1].status == 500 and delivery.state == "pending"
            waited = delivery.next_attempt_at - clock.now
            assert delay * (1 - JITTER) <= waited <= delay * (1 + JITTER)
            clock.now = delivery.next_attempt_at - timedelta(seconds=1)
            assert await deliverer.deliver_due() == 0  # not yet
            clock.now = delivery.next_attempt_at
            assert await deliverer.deliver_due() == 1
        async with pool.acquire() as conn:
            delivery, *attempts = await _attempts(conn, target)
        assert delivery.state == "delivered" and [a.status for a in attempts] == [500, 500, 500, 200]
        assert attempts[-1].response_excerpt == "answered 200" and delivery.next_attempt_at is None
        assert {r.headers["webhook-id"] for r in receiver.received} == {mid}
        stamps = [int(r.headers["webhook-timestamp"]) for r in receiver.received]
        assert stamps == sorted(stamps) and stamps[-1] - stamps[0] >= 5 + 300 + 1800 - 300
        await deliverer.sender.close()


async def test_429_and_503_wait_as_long_as_retry_after_asks(database_url: str) -> None:
    clock, user = Clock(), uuid.uuid4()
    statuses: list[int | tuple[int, dict[str, str]]] = [(503, {"retry-after": "120"}), (429, {"retry-after": "7"})]
    async with receiving(Receiver(statuses=statuses)) as receiver, db.pool(database_url) as pool:
        deliverer = Deliverer(pool, Endpoints(), _sender(), BOX, _no_disable, clock=clock)
        target = f"job:{uuid.uuid4()}"
        async with pool.acquire() as conn:
            await _message(conn, target, f"{receiver.url}/h", user, clock.now)
        await deliverer.deliver_due()
        async with pool.acquire() as conn:
            delivery, *_ = await _attempts(conn, target)
        assert delivery.next_attempt_at == clock.now + timedelta(seconds=120)
        clock.now = delivery.next_attempt_at
        await deliverer.deliver_due()
        async with pool.acquire() as conn:
            delivery, *_ = await _attempts(conn, target)
        assert delivery.next_attempt_at == clock.now + timedelta(seconds=7)
        await deliverer.sender.close()


async def _no_disable(_endpoint: uuid.UUID, _user: uuid.UUID, _reason: str) -> None:
    raise AssertionError("nothing is disabled here")


async def test_an_endpoint_failing_for_days_is_disabled_with_its_reason(database_url: str) -> None:
    clock, user, endpoint_id = Clock(), uuid.uuid4(), uuid.uuid4()
    disabled: list[tuple[uuid.UUID, str]] = []

    async def disable(endpoint: uuid.UUID, _user: uuid.UUID, reason: str) -> None:
        disabled.append((endpoint, reason))

    async with receiving(Receiver(statuses=[500] * ATTEMPTS)) as receiver, db.pool(database_url) as pool:
        secret = "whsec_" + "A" * 43 + "="
        endpoints = Endpoints({endpoint_id: Endpoint(user, f"{receiver.url}/h", ["completed"], True, BOX.seal(secret))})
        deliverer = Deliverer(pool, endpoints, _sender(), BOX, disable, clock=clock)
        async with pool.acquire() as conn:
            await _message(conn, str(endpoint_id), None, user, clock.now)
        for _ in range(ATTEMPTS):
            assert await deliverer.deliver_due() == 1
            async with pool.acquire() as conn:
                delivery, *_ = await _attempts(conn, str(endpoint_id))
            clock.now = delivery.next_attempt_at or clock.now
        await deliverer.sender.close()
        assert delivery.state == "failed" and len(receiver.received) == ATTEMPTS
        assert clock.now - clock.start > timedelta(days=1)
        ((which, reason),) = disabled
        assert which == endpoint_id and "no delivery succeeded ever" in reason and "500" in reason
