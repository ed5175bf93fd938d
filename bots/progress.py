"""Where a job stands, as a bot shows it: one `JobUpdate` per change worth telling the user.

`follow` merges two sources: the worker's progress on the bot's own NATS subject
(`tessera.progress.<frontend>.<bot>.<job>`, which only this bot and the gateway may read) and the
job as the API answers (status, queue position, estimate), read every `poll_s` while the job is
unfinished. The platform renders each update with `bots.texts.status` and edits the "queued"
message through its `EditThrottle`, which drops the identical and the too frequent ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from gateway.schemas import JobView
from streams import subjects as s
from streams.messages import Progress

TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


@dataclass(frozen=True, kw_only=True)
class JobUpdate:
    """A job's state for its progress message: `status` (QUEUED, RUNNING, ...), its place in the
    queue and estimated seconds to completion while it waits, the worker's `fraction` (0..1) and
    step message (`step 12 of 30`) while it runs."""

    job_id: uuid.UUID
    status: str
    queue_position: int | None = None
    estimated_seconds: float | None = None
    fraction: float | None = None
    step: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


async def progress_messages(nc: NATS, frontend: str, bot_id: str, job_id: uuid.UUID) -> AsyncIterator[Progress]:
    """The worker's progress reports of one job, from the bot's own subject, until the caller stops
    iterating. Core NATS: a report sent while nobody listens is gone (the next one comes soon)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=256)

    async def on_message(msg: Msg) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a slow reader skips reports, never blocks NATS
            queue.put_nowait(msg.data)

    sub = await nc.subscribe(s.progress(frontend, bot_id, str(job_id)), cb=on_message)
    decoder = msgspec.json.Decoder(Progress)
    try:
        while True:
            data = await queue.get()
            try:
                yield decoder.decode(data)
            except msgspec.DecodeError:
                continue
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def follow(
    nc: NATS,
    frontend: str,
    bot_id: str,
    job_id: uuid.UUID,
    read_job: Callable[[], Awaitable[JobView]],
    *,
    poll_s: float = 5.0,
) -> AsyncIterator[JobUpdate]:
    """Updates of a job until it is terminal (the last update yielded is the terminal one).

    `read_job` reads the job from the API (a `TesseraClient.job` acting for its user). Progress
    reports of an earlier attempt (a job requeued after its worker was lost) are skipped.
    """
    updates: asyncio.Queue[JobUpdate | BaseException] = asyncio.Queue()
    state: dict[str, JobView] = {}

    async def poll() -> None:
        try:
            while True:
                view = await read_job()
                state["job"] = view
                await updates.put(_from_view(view))
                if view.status in TERMINAL:
                    return
                await asyncio.sleep(poll_s)
        except Exception as exc:  # handed to the reader, which raises it
            await updates.put(exc)

    async def listen() -> None:
        async for report in progress_messages(nc, frontend, bot_id, job_id):
            view = state.get("job")
            if view is not None and report.attempt != view.attempt:
                continue
            await updates.put(JobUpdate(job_id=job_id, status="RUNNING", fraction=report.fraction, step=report.message))

    tasks = [
        asyncio.create_task(listen(), name=f"progress-{job_id}"),
        asyncio.create_task(poll(), name=f"poll-{job_id}"),
    ]
    try:
        while True:
            item = await updates.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.terminal:
                return
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _from_view(view: JobView) -> JobUpdate:
    return JobUpdate(
        job_id=view.job_id,
        status=view.status,
        queue_position=view.queue_position,
        estimated_seconds=view.estimated_time_seconds,
    )
