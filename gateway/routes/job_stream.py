"""/api/v1/jobs/{job_id}/stream: follow a job as server-sent events, its stored transitions first,
then live ones and progress from NATS, until its terminal event."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

import msgspec
from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from events.job import Job, JobStatus, evolve
from events.types import RecordedEvent, decode_recorded
from gateway.contract import problems
from gateway.deps import CurrentPrincipal, Services, ServicesDep
from gateway.errors import Problem
from gateway.routes.jobs import load_own_job, parse_job_id, position_and_estimate
from gateway.views import event_view
from projector import queries
from streams import subjects as s
from streams.messages import Progress

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

# A queued job's position moves when jobs ahead of it leave, which is no event of its own: its
# `status` is sent again this often while it waits (every 15 s once it runs, as a keep-alive).
QUEUED_REFRESH_S = 2.0

Live = asyncio.Queue[tuple[str, bytes]]  # ("event" or "progress", the message's data)


def _sse(event: str, data: bytes, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: ".encode() + data + b"\n\n"


@router.get(
    "/{job_id}/stream",
    summary="Follow a job as server-sent events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **problems(404, _404="JOB_NOT_FOUND")},
)
async def stream_job(
    job_id: str,
    request: Request,
    services: ServicesDep,
    principal: CurrentPrincipal,
    last_event_id: Annotated[
        str | None, Header(json_schema_extra={"pattern": "^[0-9]*$"}, description="The last event's version")
    ] = None,
) -> StreamingResponse:
    """One `event` per transition (`id` = the event's version; resume with `Last-Event-ID`), `progress`
    events while it runs; the stream closes after the terminal event."""
    parsed = parse_job_id(job_id)
    await load_own_job(services, parsed, principal.user_id)  # 404 before the stream starts
    if last_event_id and not (last_event_id.isascii() and last_event_id.isdigit()):
        raise Problem(400, "INVALID_LAST_EVENT_ID", "Last-Event-ID must be an event version number")
    after = int(last_event_id) if last_event_id else 0
    return StreamingResponse(
        (_sse(kind, data, version) async for kind, data, version in follow(services, request, parsed, after)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


Item = tuple[str, bytes, int | None]  # (SSE event name, its JSON data, the event's version or None)


async def follow(services: Services, request: Request, job_id: uuid.UUID, after: int) -> AsyncIterator[Item]:
    """A job's transitions after version `after` (stored ones, then live ones), `status` items where it
    stands (also every 15 s, as a keep-alive) and `progress` items, until its terminal transition."""
    live: Live = asyncio.Queue()
    # Subscribe first, then read the store: nothing committed in between can be missed.
    subs = await _subscribe(services, job_id, live)
    try:
        version = after
        job: Job | None = None
        async with services.pool.acquire() as conn:
            records = await queries.job_events(conn, job_id)
        for rec in records:
            job = evolve(job, rec)
            if rec.version > version:
                version = rec.version
                yield "transition", _transition(rec, job), rec.version
        if job is not None and not job.status.terminal:
            yield await _status_event(services, job, records)
        while job is not None and not job.status.terminal:
            try:
                kind, data = await asyncio.wait_for(
                    live.get(), QUEUED_REFRESH_S if job.status is JobStatus.QUEUED else 15
                )
            except TimeoutError:
                if await request.is_disconnected():
                    return
                yield await _status_event(services, job, records)  # a fresh position doubles as keep-alive
                continue
            if kind == "progress":
                if _is_current(job, data):
                    yield "progress", data, None
                continue
            pending = await _pending(services, job_id, job, data)
            if pending is None:
                continue
            for item in pending:
                job = evolve(job, item)
                records.append(item)
                yield "transition", _transition(item, job), item.version
            if not job.status.terminal:
                yield await _status_event(services, job, records)
    finally:
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


async def _subscribe(services: Services, job_id: uuid.UUID, live: Live) -> list[Subscription]:
    """The job's live events and progress, put on `live` as they come."""

    async def on_event(msg: Msg) -> None:
        await live.put(("event", msg.data))

    async def on_progress(msg: Msg) -> None:
        await live.put(("progress", msg.data))

    return [
        await services.nc.subscribe(s.job_events(str(job_id)), cb=on_event),
        await services.nc.subscribe(s.job_progress(str(job_id)), cb=on_progress),
    ]


def _is_current(job: Job, data: bytes) -> bool:
    """Whether a progress message is of the job's running attempt (not a late one of an older)."""
    progress = msgspec.json.decode(data, type=Progress)
    return progress.attempt == job.attempt and job.status is JobStatus.RUNNING


async def _pending(services: Services, job_id: uuid.UUID, job: Job, data: bytes) -> list[RecordedEvent] | None:
    """The events a live event message brings the job to, in order: None when the job has it
    already; with the events before it that were missed, read from the store."""
    rec = decode_recorded(data)
    if rec.version <= job.version:
        return None
    if rec.version > job.version + 1:  # a message we did not see: fill the hole from the store
        async with services.pool.acquire() as conn:
            missing = await queries.job_events(conn, job_id, job.version)
        return [r for r in missing if r.version <= rec.version]
    return [rec]


async def _status_event(services: Services, job: Job, records: list[RecordedEvent]) -> Item:
    """Where an unfinished job stands now: an un-numbered `status` event, not part of the history."""
    position, estimate = await position_and_estimate(services, job, records)
    data = {"job_id": str(job.id), "status": job.status.value, "queue_position": position}
    return "status", msgspec.json.encode({**data, "estimated_time_seconds": estimate}), None


def _transition(rec: RecordedEvent, job: Job) -> bytes:
    view = event_view(rec).model_dump(mode="json")
    view["job_id"] = str(job.id)
    view["status"] = job.status.value
    return msgspec.json.encode(view)
