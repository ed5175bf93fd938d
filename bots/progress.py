"""Where a job stands, as a bot shows it: one `JobUpdate` per change worth telling the user.

`follow` merges two sources: the worker's progress on the bot's own NATS subject
(`tessera.progress.<frontend>.<bot>.<job>`, which only this bot and the gateway may read) and the
job's server-sent events from the API (each transition, and where it stands in the queue, pushed
at each change and every 15 s). Neither is polled. The platform renders each update with
`bots.texts.status` and edits the "queued" message through its `EditThrottle`, which drops the
identical and the too frequent ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from events.types import JobDispatched, type_name
from gateway.schemas import StatusEvent, StreamEvent, TransitionEvent
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


StreamJob = Callable[[int | None], AsyncIterator[StreamEvent]]

RECONNECTS = 5  # consecutive broken event streams before `follow` gives up (the result comes anyway)


async def follow(
    nc: NATS,
    frontend: str,
    bot_id: str,
    job_id: uuid.UUID,
    stream_job: StreamJob,
) -> AsyncIterator[JobUpdate]:
    """Updates of a job until it is terminal (the last update yielded is the terminal one).

    Both sources push: `stream_job(last_event_id)` is the job's server-sent events from the API
    (`TesseraClient.stream` acting for its user: each transition, and where the job stands in the
    queue at each change and every 15 s), resumed after the last transition when the connection
    breaks; the worker's progress comes on the bot's own NATS subject. Progress reports of an
    earlier attempt (a job requeued after its worker was lost) are skipped.
    """
    updates: asyncio.Queue[JobUpdate | BaseException] = asyncio.Queue()
    attempt: dict[str, int] = {}

    async def watch() -> None:
        try:
            await _watch(stream_job, job_id, updates, attempt)
        except Exception as exc:  # handed to the reader, which raises it
            await updates.put(exc)

    async def listen() -> None:
        async for report in progress_messages(nc, frontend, bot_id, job_id):
            if "current" in attempt and report.attempt != attempt["current"]:
                continue
            await updates.put(JobUpdate(job_id=job_id, status="RUNNING", fraction=report.fraction, step=report.message))

    tasks = [
        asyncio.create_task(listen(), name=f"progress-{job_id}"),
        asyncio.create_task(watch(), name=f"events-{job_id}"),
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


async def _watch(
    stream_job: StreamJob, job_id: uuid.UUID, updates: asyncio.Queue[JobUpdate | BaseException], attempt: dict[str, int]
) -> None:
    """Put an update on `updates` for each status the job's event stream tells, until its terminal
    transition; resume after the last transition when the stream breaks, RECONNECTS times in a row."""
    version: int | None = None
    failures = 0
    while True:
        try:
            async for event in stream_job(version):
                failures = 0
                if isinstance(event, TransitionEvent):
                    version = event.version
                    if event.type == type_name(JobDispatched):
                        attempt["current"] = int(event.data.get("attempt", 0))
                    if event.status in TERMINAL:
                        await updates.put(JobUpdate(job_id=job_id, status=event.status))
                        return
                elif isinstance(event, StatusEvent):
                    await updates.put(_from_status(job_id, event))
                # A ProgressEvent is skipped: the same reports come on the bot's own NATS subject.
        except Exception:
            failures += 1
            if failures >= RECONNECTS:
                raise
            await asyncio.sleep(min(2.0**failures / 4, 5.0))


def _from_status(job_id: uuid.UUID, event: StatusEvent) -> JobUpdate:
    return JobUpdate(
        job_id=job_id,
        status=event.status,
        queue_position=event.queue_position,
        estimated_seconds=event.estimated_time_seconds,
    )
