"""/api/v1/events: all of a user's unfinished jobs as one server-sent event stream.

A browser holds about six connections per origin, so a page follows every job it shows through
this one stream rather than one stream per job. Each job is followed as `/jobs/{id}/stream`
follows it (`job_stream.follow`); the items are the same, each naming its `job_id`.

Resuming: every transition's SSE `id` is a cursor, `<log seq>~<job>.<version>~…`: the jobs being
followed with the last version sent of each, and the log position up to which new jobs were looked
for. A client that reconnects with it in `Last-Event-ID` gets the transitions it missed, including
those of jobs submitted and finished while it was away.

New jobs are found two ways: a submit through this gateway wakes the user's streams at once, and
every few seconds each stream looks in the log for JobSubmitted events of its user past its
cursor (for submits through other gateways, bots or the API).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

import msgspec
from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse

from events import store
from gateway.contract import problems
from gateway.deps import CurrentPrincipal, Services, ServicesDep
from gateway.errors import Problem
from gateway.routes.job_stream import follow
from gateway.wakers import WAKE, Merged
from projector import queries

router = APIRouter(prefix="/api/v1", tags=["jobs"])

RETRY_MS = 3000  # how soon a browser reconnects after the stream drops
KEEP_ALIVE_S = 15.0
DISCOVER_S = 3.0  # how often a stream looks for jobs submitted elsewhere
MAX_FOLLOWED = 100


_UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
CURSOR = f"^([0-9]+(~{_UUID}\\.[0-9]+)*)?$"  # what Cursor.encode writes (for the OpenAPI document)


class Cursor(msgspec.Struct):
    head: int  # the log position up to which this user's new jobs were looked for
    versions: dict[uuid.UUID, int]  # job -> last version sent

    def encode(self) -> str:
        return "~".join([str(self.head), *(f"{job}.{version}" for job, version in self.versions.items())])

    @classmethod
    def decode(cls, raw: str) -> Cursor:
        try:
            head, *jobs = raw.split("~")
            versions = {uuid.UUID(job): int(version) for job, version in (j.split(".") for j in jobs)}
            return cls(head=int(head), versions=versions)
        except ValueError:
            raise Problem(400, "INVALID_LAST_EVENT_ID", "Last-Event-ID is not a cursor this stream sent") from None


@router.get(
    "/events",
    summary="Follow all your unfinished jobs as one stream of server-sent events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **problems(400, _400="INVALID_LAST_EVENT_ID")},
)
async def user_events(
    request: Request,
    services: ServicesDep,
    principal: CurrentPrincipal,
    last_event_id: Annotated[
        str | None, Header(json_schema_extra={"pattern": CURSOR}, description="The `id` of the last event received")
    ] = None,
) -> StreamingResponse:
    """The `transition`, `progress` and `status` events of each of your unfinished jobs, and of each
    job you submit while connected, each with its `job_id`; keep-alive comments every 15 s. Resume
    with `Last-Event-ID` set to the last `id` received: nothing in between is missed."""
    cursor = Cursor.decode(last_event_id) if last_event_id else None
    return StreamingResponse(
        _Feed(services, request, principal.user_id, cursor).run(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class _Feed:
    """One open stream: the jobs it follows, the last version sent of each, and the log position up
    to which the user's new jobs were looked for."""

    def __init__(self, services: Services, request: Request, user_id: uuid.UUID, cursor: Cursor | None) -> None:
        self.services = services
        self.request = request
        self.user_id = user_id
        self.merged: Merged = asyncio.Queue()
        self.followers: dict[uuid.UUID, asyncio.Task[None]] = {}
        self.sent: dict[uuid.UUID, int] = dict(cursor.versions) if cursor else {}
        self.head = cursor.head if cursor else None

    async def _pump(self, job_id: uuid.UUID, after: int) -> None:
        try:
            async for kind, data, version in follow(self.services, self.request, job_id, after):
                await self.merged.put((job_id, kind, data, version))
        finally:
            self.merged.put_nowait((job_id, "end", b"", None))

    def _start(self, job_id: uuid.UUID) -> None:
        if job_id not in self.followers and len(self.followers) < MAX_FOLLOWED:
            self.sent.setdefault(job_id, 0)
            self.followers[job_id] = asyncio.create_task(self._pump(job_id, self.sent[job_id]))

    async def _discover(self, after: int) -> None:
        """Follow the user's jobs submitted after log position `after`, up to the log's head now."""
        async with self.services.pool.acquire() as conn:
            head = await store.head(conn)
            for job_id in await store.jobs_submitted_by(conn, self.user_id, after, head):
                self._start(job_id)
        self.head = head

    async def _begin(self) -> None:
        # The read model's unfinished jobs and the log position it has folded, from one snapshot:
        # jobs submitted after that position are found in the log itself.
        async with self.services.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            projected = await queries.projected_seq(conn)
            unfinished = await queries.unfinished_jobs(conn, self.user_id, MAX_FOLLOWED)
            # The cursor comes from the client: only the user's own jobs in it are followed.
            own = await store.jobs_of_user(conn, self.user_id, list(self.sent))
        self.sent = {job_id: version for job_id, version in self.sent.items() if job_id in own}
        for job_id in [*self.sent, *unfinished]:
            self._start(job_id)
        # Resumed, the cursor's jobs are every job submitted up to its position that had not ended
        # when it was sent: new ones are those after it (from the read model's position, the jobs
        # after it may be ones that ended, already sent, and would be sent again).
        await self._discover(self.head if self.head is not None else projected)

    async def _next(self) -> tuple[uuid.UUID, str, bytes, int | None]:
        """The next item; a `wake` when nothing came for DISCOVER_S (time to look for new jobs)."""
        try:
            return await asyncio.wait_for(self.merged.get(), DISCOVER_S)
        except TimeoutError:
            return WAKE, "wake", b"", None

    async def run(self) -> AsyncIterator[bytes]:
        await self._begin()
        yield f"retry: {RETRY_MS}\n: following {len(self.followers)} jobs\n\n".encode()
        quiet_since = time.monotonic()
        with self.services.wakers.watching(self.user_id, self.merged):
            try:
                while True:
                    job_id, kind, data, version = await self._next()
                    if kind == "wake":
                        if await self.request.is_disconnected():
                            return
                        await self._discover(self.head or 0)
                    elif kind == "end":
                        self.followers.pop(job_id, None)
                        self.sent.pop(job_id, None)
                    else:
                        event_id = None
                        if kind == "transition" and version is not None:
                            self.sent[job_id] = version
                            event_id = Cursor(head=self.head or 0, versions=self.sent).encode()
                        yield _item(kind, data, event_id)
                        quiet_since = time.monotonic()
                    if time.monotonic() - quiet_since > KEEP_ALIVE_S:
                        yield b": keep-alive\n\n"
                        quiet_since = time.monotonic()
            finally:
                for task in self.followers.values():
                    task.cancel()


def _item(kind: str, data: bytes, event_id: str | None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: ".encode() + data + b"\n\n"
