"""A leader's housekeeping beside the command loop: relaying what a previous leader committed and
may not have published, re-sending unstarted dispatches, following the workers bucket, and
recording the expiry of artifacts and uploads past their time.
"""

from __future__ import annotations

import logging
import uuid

import asyncpg
from nats.js import JetStreamContext

from events import store
from events.errors import ConcurrencyError
from events.job import JobStatus, fold
from events.types import JobCancelled, JobCompleted, JobFailed, RecordedEvent, type_name
from projector import queries as read_models
from scheduler import queries
from scheduler.batch import Batching
from scheduler.outbox import Outbox, Outgoing, terminal_notifications
from streams.messages import WorkerStatus
from streams.workers_feed import WorkersFeed

log = logging.getLogger(__name__)


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
