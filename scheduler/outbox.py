"""Carries out a committed batch's effects on NATS, in order, retrying until NATS accepts them.

Dispatches and events are published to JetStream with a `Nats-Msg-Id`, so a retry, or a relay
after a crash, cannot duplicate them. Replies and worker control messages are core NATS: the
first is answered by a gateway that may be gone, the second is a hint the scheduler can lose.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from events.job import TERMINAL, Job, JobStatus
from events.types import JobCompleted, RecordedEvent, StreamType, encode
from streams import subjects as s
from streams.messages import Dispatch, Notification
from streams.messages import encode as encode_msg

log = logging.getLogger(__name__)

ACK_TIMEOUT_S = 10.0


@dataclass
class Outgoing:
    dispatches: list[tuple[str, Dispatch]] = field(default_factory=list)
    events: list[RecordedEvent] = field(default_factory=list)
    notifications: list[tuple[RecordedEvent, Job]] = field(default_factory=list)
    purge_workers: list[str] = field(default_factory=list)
    discard_objects: list[str] = field(default_factory=list)


def notification_for(rec: RecordedEvent, job: Job) -> Notification:
    artifacts = rec.data.artifacts if isinstance(rec.data, JobCompleted) else []
    return Notification(
        job_id=job.id,
        status=job.status.value,
        frontend=job.frontend,
        bot_id=job.bot_id,
        user_ref=job.user_ref,
        reply_context=job.reply_context,
        cost_tokens=job.cost_tokens if job.status is JobStatus.COMPLETED else 0,
        artifacts=artifacts,
        error=job.error,
    )


class _Round:
    """The acknowledgements of one send: every message carries the same reply subject, and the
    round is over when as many acknowledgements came back as messages went out."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.count = 0  # messages sent
        self.acked = 0
        self.error: bytes | None = None
        self._sealed = False  # no more messages to come
        self._done = asyncio.get_running_loop().create_future()

    def ack(self, data: bytes) -> None:
        self.acked += 1
        # A stored message, or a duplicate the stream dropped, is acknowledged with its stream
        # and sequence. An error, or an empty "no responders" status, is a refusal.
        if (not data or b'"error"' in data) and self.error is None:
            self.error = data or b"no stream took the message"
        if self._sealed and self.acked >= self.count and not self._done.done():
            self._done.set_result(None)

    async def all_stored(self) -> None:
        """Wait for the acknowledgement of every message sent in this round."""
        self._sealed = True
        if self.acked < self.count:
            # An acknowledgement lost with a connection would otherwise be waited for forever.
            await asyncio.wait_for(asyncio.shield(self._done), ACK_TIMEOUT_S)
        if self.error is not None:
            raise nats.errors.Error(f"JetStream refused a message: {self.error[:300]!r}")


class _Acks:
    """JetStream acknowledgements of the outbox's publishes, read on one subscription of its own.

    nats-py's publish_async makes a future, a token and a parsed PubAck for each message; the
    outbox only needs to know that all of a send's messages were stored, and this is a
    measurable share of the scheduler's CPU per job (docs/performance.md).
    """

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = f"{nc.new_inbox()}."
        self._rounds: dict[str, _Round] = {}
        self._sub: Subscription | None = None
        self._n = 0

    async def expect(self) -> _Round:
        if self._sub is None:
            self._sub = await self._nc.subscribe(f"{self._prefix}*", cb=self._on_ack)
        self._rounds.clear()  # a timed-out round's late acknowledgements are of no use
        self._n += 1
        round_ = _Round(f"{self._prefix}{self._n}")
        self._rounds[round_.subject] = round_
        return round_

    async def _on_ack(self, msg: Msg) -> None:
        round_ = self._rounds.get(msg.subject)
        if round_ is not None:
            round_.ack(msg.data)


class Outbox:
    def __init__(self, nc: NATS, js: JetStreamContext) -> None:
        self._nc = nc
        self._js = js
        self._acks = _Acks(nc)
        self._queue: asyncio.Queue[Outgoing] = asyncio.Queue()
        self.relayed_seq = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def put(self, outgoing: Outgoing) -> None:
        self._idle.clear()
        self._queue.put_nowait(outgoing)

    async def drained(self) -> None:
        await self._idle.wait()

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._send_until_accepted(batch)
            if self._queue.empty():
                self._idle.set()

    async def _send_until_accepted(self, batch: list[Outgoing]) -> None:
        delay = 0.05
        while True:
            try:
                await self._send(batch)
                return
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("outbox: NATS refused a publish (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _send(self, batch: list[Outgoing]) -> None:
        acks = await self._acks.expect()
        publish = self._nc.publish
        for out in batch:  # dispatches first: they are what latency is measured on
            # A lost worker's old dispatches are purged before the batch's new ones are sent:
            # purging after them deleted the re-dispatches of a restarted worker's jobs.
            await self._purge(out)
            for worker_id, dispatch in out.dispatches:
                await publish(
                    s.dispatch(worker_id),
                    encode_msg(dispatch),
                    reply=acks.subject,
                    headers={s.HDR_MSG_ID: f"{dispatch.job_id}:{dispatch.attempt}"},
                )
                acks.count += 1
        last_seq = 0
        for out in batch:
            for rec in out.events:
                await publish(
                    s.event(rec.stream_type, str(rec.stream_id), rec.type),
                    encode(rec),
                    reply=acks.subject,
                    headers={s.HDR_MSG_ID: str(rec.event_id), s.HDR_SEQ: str(rec.seq)},
                )
                acks.count += 1
                last_seq = max(last_seq, rec.seq)
            for rec, job in out.notifications:
                await publish(
                    s.done(job.frontend, job.bot_id, str(job.id)),
                    encode_msg(notification_for(rec, job)),
                    reply=acks.subject,
                    headers={s.HDR_MSG_ID: f"done:{job.id}"},
                )
                acks.count += 1
        await acks.all_stored()
        self.relayed_seq = max(self.relayed_seq, last_seq)
        for out in batch:
            await self._side_effects(out)

    async def _purge(self, out: Outgoing) -> None:
        """Drop the unread dispatches of workers the batch declared lost, once (a retried send
        must not purge again: it would delete what the failed try already stored). Only tidying:
        a restarted worker also drops the dispatches meant for its previous instance."""
        while out.purge_workers:
            worker_id = out.purge_workers[0]
            try:
                await self._js.purge_stream(s.DISPATCH_STREAM, subject=s.dispatch(worker_id))
            except nats.errors.Error as exc:
                log.warning("could not purge dispatches of lost worker %s: %s", worker_id, exc)
            out.purge_workers.pop(0)

    async def _side_effects(self, out: Outgoing) -> None:
        if out.discard_objects:
            store = await self._js.object_store(s.ARTIFACTS_BUCKET)
            for name in out.discard_objects:
                try:
                    await store.delete(name)
                except (NotFoundError, nats.errors.Error) as exc:
                    log.info("discarding refused artifact %s: %s", name, exc)


# Frontends that follow their jobs by server-sent events and webhooks, both made from the events:
# nothing consumes a completion notification of theirs, so none is written (an fsynced JetStream
# write per job, and room in the notify stream that bots need).
UNNOTIFIED_FRONTENDS = frozenset({"api", "web"})


def terminal_notifications(records: list[RecordedEvent], jobs: dict[uuid.UUID, Job]) -> list[tuple[RecordedEvent, Job]]:
    """The terminal events of a batch that a frontend is notified of, paired with the job state they produced."""
    out = []
    for rec in records:
        if rec.stream_type == StreamType.JOB:
            job = jobs.get(rec.stream_id)
            if (
                job is not None
                and job.status in TERMINAL
                and job.version == rec.version
                and job.frontend not in UNNOTIFIED_FRONTENDS
            ):
                out.append((rec, job))
    return out
