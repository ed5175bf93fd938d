"""A leader's housekeeping beside the command loop: relaying what a previous leader committed and
may not have published, re-sending unstarted dispatches, following the workers bucket, and
recording the expiry of artifacts and uploads past their time.
"""

from __future__ import annotations

import logging
import time
import uuid

import asyncpg
import nats.errors
from nats.js import JetStreamContext

from events import store
from events.errors import ConcurrencyError
from events.job import JobStatus, fold
from events.types import JobCancelled, JobCompleted, JobFailed, RecordedEvent, type_name
from projector import queries as read_models
from scheduler import queries
from scheduler.batch import Batching
from scheduler.outbox import Outbox, Outgoing, terminal_notifications
from streams import subjects as s
from streams.messages import WorkerStatus
from streams.workers_feed import WorkersFeed

log = logging.getLogger(__name__)

TRIM_EVERY_S = 30.0  # how often the leader purges the commands it has handled (`trim_commands`)


class Housekeeping(Batching):
    """The side work of a term, as `scheduler.service.Scheduler` runs it."""

    async def _expire_artifacts(self, conn: asyncpg.Connection, outbox: Outbox) -> bool:
        """Record and carry out the expiry of artifacts and uploads past their time, in a commit of
        its own, so a failure here cannot stop the scheduling of jobs. False when it failed."""
        expired = await read_models.expired_artifacts(conn)
        uploads = await read_models.expired_uploads(conn)
        if not expired and not uploads:
            return True
        assert self.state is not None
        try:
            self.state.expire_artifacts(expired)
            self.state.expire_uploads(uploads)
            await self._commit(conn, outbox)
            return True
        except (asyncpg.PostgresError, ConcurrencyError):
            log.exception("%s: recording artifact expiry failed; trying again later", self.name)
            await self._reload(conn)  # drop the half-made decision
            return False

    _chores_due: dict[str, float]  # chore -> when it is due next (monotonic); emptied at each term's start

    async def _chores(self, conn: asyncpg.Connection, js: JetStreamContext, outbox: Outbox) -> None:
        """The leader's periodic work between two batches: expire artifacts, trim handled commands."""
        now = time.monotonic()
        due = self._chores_due
        if now >= due.get("expiry", 0.0):
            expired_all = await self._expire_artifacts(conn, outbox)
            due["expiry"] = now + (self.settings.expiry_check_s if expired_all else 600)
        if now >= due.get("trim", 0.0):
            due["trim"] = now + TRIM_EVERY_S
            await self.trim_commands(js)

    async def trim_commands(self, js: JetStreamContext) -> int:
        """Purge the commands every leader has handled, but the last `commands_kept`; returns how many went.

        A command is acknowledged only once its outcome is committed to PostgreSQL, so the stream
        needs to hold only what is not acknowledged yet (above the consumer's ack floor): retained, it
        would grow with every job ever made, and nats-server's memory and restart time with it. The
        newest handled ones stay for operators reading the stream with `nats`.
        """
        try:
            info = await js.consumer_info(s.COMMANDS_STREAM, s.SCHEDULER_CONSUMER)
            floor = info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0
            keep_from = floor + 1 - self.settings.commands_kept
            first = (await js.stream_info(s.COMMANDS_STREAM)).state.first_seq
            if keep_from <= first:
                return 0
            await js.purge_stream(s.COMMANDS_STREAM, seq=keep_from)
            return keep_from - first
        except nats.errors.Error as exc:
            log.warning("%s: could not trim the commands stream (%r); trying again later", self.name, exc)
            return 0

    async def _catch_up(self, conn: asyncpg.Connection, outbox: Outbox) -> None:
        """Relay the committed events a previous leader may not have published."""
        assert self.state is not None
        position = await queries.relay_position(conn)
        while True:
            records = await store.load_after(conn, position, 2000)
            if not records:
                break
            notifications = []
            terminal_ids = [r.stream_id for r in records if r.stream_type == "job" and r.type in _TERMINAL_TYPES]
            if terminal_ids:
                by_job: dict[uuid.UUID, list[RecordedEvent]] = {}
                for rec in await store.load_streams(conn, terminal_ids):
                    by_job.setdefault(rec.stream_id, []).append(rec)
                # fold() is None only for no records; terminal_notifications treats a missing job alike
                jobs = {job_id: job for job_id, recs in by_job.items() if (job := fold(recs)) is not None}
                notifications = terminal_notifications(records, jobs)
            outbox.put(Outgoing(events=records, notifications=notifications))
            position = records[-1].seq
        log.info("%s: relay caught up to seq %d", self.name, position)

    def _redispatch_unstarted(self, outbox: Outbox) -> None:
        """A dispatch committed just before a crash may never have been published: send it again."""
        assert self.state is not None
        pending = [
            (job.worker_id, self.state.dispatch_message(job))
            for job in self.state.jobs.values()
            if job.status is JobStatus.RUNNING and job.started_at is None and job.worker_id
        ]
        if pending:
            outbox.put(Outgoing(dispatches=pending))

    async def _watch_workers(self, js: JetStreamContext) -> None:
        def seen(status: WorkerStatus) -> None:
            if self.state is not None:
                self.state.worker_seen(status)

        def gone(worker_id: str) -> None:
            if self.state is not None:
                self.state.worker_gone(worker_id)

        def known() -> None:  # the end of the bucket's current contents: the fleet is known
            if self.state is not None:
                self.state.fleet_known = True

        self._feed = WorkersFeed(js, on_status=seen, on_gone=gone, on_known=known)
        try:
            await self._feed.run()
        finally:
            self._feed = None


_TERMINAL_TYPES = {type_name(JobCompleted), type_name(JobFailed), type_name(JobCancelled)}
