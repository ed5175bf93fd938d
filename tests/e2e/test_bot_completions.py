"""A bot learns of its users' results from its completion subject, not by polling."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from bots.completions import CompletionFeed
from streams.messages import Notification
from tests.conftest import Platform


async def test_a_bot_gets_each_result_once_handled_even_if_its_handler_fails_first(platform: Platform) -> None:
    key = await platform.frontend_key("telegram", "tg-1")
    async with platform.client(key, **{"Tessera-User-Ref": "telegram:42"}) as client:
        job_id = (
            await client.post(
                "/api/v1/jobs",
                json={
                    "capability": "echo",
                    "params": {"prompt": "hi"},
                    "reply_context": {"chat_id": 42, "message_id": 7},
                },
            )
        ).json()["job_id"]
        other = await platform.frontend_key("discord", "dc-1")
    async with platform.client(other, **{"Tessera-User-Ref": "discord:9"}) as stranger:
        await stranger.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "not for tg-1"}})

    feed = CompletionFeed(platform.nats_url, "telegram", "tg-1", ack_wait_s=5)
    received: list[Notification] = []
    attempts = 0

    async def reply_to_user(notification: Notification) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("Telegram is down")  # not acknowledged: delivered again
        received.append(notification)

    task = asyncio.create_task(feed.run(reply_to_user))
    for _ in range(100):
        if received:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    await feed.stop()
    await asyncio.wait_for(task, 10)
    assert attempts == 2 and len(received) == 1  # only its own job, handled once after one failure
    done = received[0]
    assert str(done.job_id) == job_id and done.status == "COMPLETED" and done.user_ref == "telegram:42"
    assert done.reply_context == {"chat_id": 42, "message_id": 7} and done.artifacts[0].text == "hi"


async def test_a_delivery_slower_than_ack_wait_is_not_handed_out_again_while_it_runs(platform: Platform) -> None:
    """An upload that outlasts ack_wait (50 MB to Telegram): the feed keeps it, and the notification
    fetched with it that waits its turn, in progress, so neither comes again, to this process or to
    another one of the same bot (a restart overlapping the old process)."""
    key = await platform.frontend_key("telegram", "tg-slow")
    job_ids: list[str] = []
    async with platform.client(key, **{"Tessera-User-Ref": "telegram:43"}) as client:
        for prompt in ("first", "second"):
            job = await client.post(
                "/api/v1/jobs",
                json={"capability": "echo", "params": {"prompt": prompt}, "reply_context": {"chat_id": 43}},
            )
            job_ids.append(job.json()["job_id"])
        for job_id in job_ids:
            await platform.wait_status(client, job_id, {"COMPLETED"})

    ack_wait = 1.5
    feeds = [CompletionFeed(platform.nats_url, "telegram", "tg-slow", ack_wait_s=ack_wait) for _ in range(2)]
    handled: list[tuple[int, str]] = []

    def slow_upload(index: int) -> Callable[[Notification], Awaitable[None]]:
        async def upload(notification: Notification) -> None:
            handled.append((index, str(notification.job_id)))
            await asyncio.sleep(ack_wait * 2.5)

        return upload

    first = asyncio.create_task(feeds[0].run(slow_upload(0)))
    for _ in range(100):
        if handled:
            break
        await asyncio.sleep(0.05)
    second = asyncio.create_task(feeds[1].run(slow_upload(1)))  # the same durable consumer, fetching meanwhile
    await asyncio.sleep(ack_wait * 7)  # both handled one after the other, and time for any repeat
    for feed in feeds:
        await feed.stop()
    await asyncio.wait_for(asyncio.gather(first, second), 20)
    assert sorted(job_id for _, job_id in handled) == sorted(job_ids), handled  # each exactly once
