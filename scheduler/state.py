"""The scheduler's in-memory model: one facade over its aggregates.

Everything here is synchronous and does no I/O: a handler reads the state, emits events (which
evolve the state at once, so later commands in the same batch see them) and records the effects
to carry out after the batch commits. If the commit fails the whole state is thrown away and
rebuilt from PostgreSQL, so a handler never needs to undo anything.

The state is split by aggregate, each in its module: accounts (users, plans, frontends), quota
(token ledger, rate windows, uploads), fleet (workers), queue, and jobs, which moves jobs along
and keeps the others' counts in step. They share one `Emitter` (scheduler.effects). This facade
builds them, loads them, and gives the service and the tests one object to talk to.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

from base.catalog import Catalog
from events.job import Job, JobStatus
from events.types import JobQueued, PlanDefined, RecordedEvent, StreamType
from scheduler.accounts import Accounts, FrontendView, UserView
from scheduler.effects import Effects, Emitter
from scheduler.fleet import Fleet, WorkerView
from scheduler.jobs import JobBook
from scheduler.policy import PolicyConfig, QueuePolicy, TesseraPolicy
from scheduler.queue import Queue
from scheduler.quota import Ledger, Quota, UploadView
from scheduler.webhooks import Webhooks
from streams.messages import (
    AnyCommand,
    CancelJob,
    ChangeUserPlan,
    CreateFrontendKey,
    CreateUser,
    CreateWebhook,
    DefinePlan,
    DeleteUpload,
    IssueApiKey,
    RegisterUser,
    ReportCompleted,
    ReportFailed,
    ReportStarted,
    RevokeKey,
    StoreUpload,
    SubmitJob,
    UpdateWebhook,
)

__all__ = [
    "Effects",
    "FrontendView",
    "Handler",
    "Ledger",
    "Limits",
    "SchedulerState",
    "UploadView",
    "UserView",
    "WorkerView",
]

# A command's handler: (command, reply subject or None, cause).
Handler = Callable[[Any, str | None, str], None]


@dataclass(frozen=True)
class Limits:
    """The scheduler's tunables (docs/scheduling.md)."""

    max_attempts: int = 3
    worker_timeout_s: float = 10.0
    worker_grace_s: float = 300.0  # a model served this recently is still admitted (queued)
    # How long an attempt may be missing from its worker's heartbeats before it is requeued (at
    # least three of that worker's heartbeat intervals).
    reconcile_grace_s: float = 10.0
    queue_timeout_s: float = 1800.0
    quota_timezone: str = "UTC"
    policy: PolicyConfig = field(default_factory=PolicyConfig)


class SchedulerState:
    """The aggregates of one scheduler term, built empty and then `load`ed from the store."""

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        catalog: Catalog | None = None,
        wall_clock: Callable[[], float] = time.time,
        policy: QueuePolicy | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.catalog = catalog or Catalog.load()
        self.out = Emitter(wall_clock, self.apply)
        self.jobs: dict[uuid.UUID, Job] = {}
        self.accounts = Accounts(self.out, self.catalog)
        self.quota = Quota(self.out, self.accounts, ZoneInfo(self.limits.quota_timezone))
        self.fleet = Fleet(
            self.out,
            self.jobs,
            self._retry,
            worker_timeout_s=self.limits.worker_timeout_s,
            worker_grace_s=self.limits.worker_grace_s,
            reconcile_grace_s=self.limits.reconcile_grace_s,
        )
        self.queue = Queue(self.out, self.catalog, policy or TesseraPolicy(self.limits.policy))
        self.book = JobBook(
            self.out,
            self.catalog,
            self.accounts,
            self.quota,
            self.fleet,
            self.queue,
            self.jobs,
            max_attempts=self.limits.max_attempts,
            queue_timeout_s=self.limits.queue_timeout_s,
        )
        self.webhooks = Webhooks(self.out)
        # Every command, and the aggregate's handler that decides it (reports get no reply).
        self.handlers: dict[type[AnyCommand], Handler] = {
            SubmitJob: self.book.submit,
            CancelJob: self.book.cancel,
            ReportStarted: lambda cmd, _reply_to, cause: self.book.started(cmd, cause),
            ReportCompleted: lambda cmd, _reply_to, cause: self.book.completed(cmd, cause),
            ReportFailed: lambda cmd, _reply_to, cause: self.book.failed(cmd, cause),
            CreateUser: self.accounts.create_user,
            CreateFrontendKey: self.accounts.create_frontend_key,
            IssueApiKey: self.accounts.issue_api_key,
            RegisterUser: self.accounts.register_user,
            RevokeKey: self.accounts.revoke_key,
            StoreUpload: self.quota.store_upload,
            DeleteUpload: self.quota.delete_upload,
            ChangeUserPlan: self.accounts.change_user_plan,
            DefinePlan: self.accounts.define_plan,
            CreateWebhook: self.webhooks.create,
            UpdateWebhook: self.webhooks.update,
        }
        # The same handlers by name, for the tests and the service.
        self.submit = self.book.submit
        self.cancel = self.book.cancel
        self.started = self.book.started
        self.completed = self.book.completed
        self.failed = self.book.failed
        self.expire_artifacts = self.book.expire_artifacts
        self.create_user = self.accounts.create_user
        self.change_user_plan = self.accounts.change_user_plan
        self.define_plan = self.accounts.define_plan
        self.create_frontend_key = self.accounts.create_frontend_key
        self.issue_api_key = self.accounts.issue_api_key
        self.revoke_key = self.accounts.revoke_key
        self.store_upload = self.quota.store_upload
        self.delete_upload = self.quota.delete_upload
        self.expire_uploads = self.quota.expire_uploads
        # The workers bucket and the NATS connection.
        self.worker_seen = self.fleet.worker_seen
        self.worker_gone = self.fleet.worker_gone
        self.connection_lost = self.fleet.connection_lost
        self.connection_back = self.fleet.connection_back
        # Reading.
        self.summary = self.book.summary
        self.dispatch_message = self.book.dispatch_message
        self.schedule = self.book.schedule
        self.forget_terminal = self.book.forget_terminal
        self.typical_seconds = self.book.typical_seconds
        self.capable_slots = self.fleet.capable_slots
        self.quota_day = self.quota.quota_day
        self.quota_resets_at = self.quota.quota_resets_at
        self.plan_of = self.accounts.plan_of

    def _retry(self, job: Job, code: str, reason: str, cause: str) -> None:
        self.book.retry(job, code, reason, cause)

    # --- loading -----------------------------------------------------------------------------

    def load(
        self,
        records: list[RecordedEvent],
        head_seq: int,
        used: dict[tuple[uuid.UUID, date], float] | None = None,
        execution_s: dict[str, float] | None = None,
        recent_requests: list[tuple[uuid.UUID, float]] | None = None,
        uploads: dict[tuple[uuid.UUID, date], tuple[int, int]] | None = None,
    ) -> None:
        """Rebuild from the events of plans, frontends, the users of active jobs and active jobs
        (in log order), the tokens charged on recent quota days, measured execution times and the
        submits of the last minute (each user's rate window)."""
        queue = self.queue
        queue.order = head_seq
        for rec in records:
            self.apply(rec)
            if isinstance(rec.data, JobQueued):
                queue.admitted[rec.stream_id] = rec.seq
        for (user_id, day), tokens in (used or {}).items():
            self.quota.of(user_id, day).used += tokens
        self.book.execution_s.update(execution_s or {})
        for user_id, at in recent_requests or []:  # the rate windows, as the log remembers them
            self.quota.count_request(user_id, at)
        for key, (count, size) in (uploads or {}).items():
            self.quota.upload_ledger[key] = [count, size]
        queue.admitted = {
            job_id: order
            for job_id, order in queue.admitted.items()
            if job_id in self.jobs and not self.jobs[job_id].status.terminal
        }
        for job in self.jobs.values():
            if job.status is JobStatus.QUEUED:
                queue.enqueue(job)
            elif job.status is JobStatus.RUNNING:
                queue.user_running[job.user_id] += 1
                worker = self.fleet.workers.get(job.worker_id or "")
                if worker:
                    worker.take(job.id, job.model)
            if job.quota_day is not None and not job.status.terminal:
                self.quota.of(job.user_id, job.quota_day).reserved += job.reserved_tokens

    def apply(self, rec: RecordedEvent) -> None:
        """Fold one stored event into the state (loading, and events this process emits)."""
        if rec.stream_type == StreamType.JOB:
            self.book.apply(rec)
        elif rec.stream_type == StreamType.UPLOAD:
            self.quota.apply(rec)
        elif rec.stream_type == StreamType.WEBHOOK:
            self.webhooks.apply(rec)
        else:
            self.accounts.apply(rec)

    def take_effects(self) -> Effects:
        return self.out.take()

    def tick(self, now: float | None = None) -> None:
        """Declare workers lost whose heartbeats stopped; fail jobs that waited too long."""
        now = time.monotonic() if now is None else now
        self.fleet.tick(now)
        self.book.tick(now)

    # --- views of the aggregates' state --------------------------------------------------------

    @property
    def clock(self) -> Callable[[], float]:
        return self.out.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.out.clock = clock

    @property
    def fleet_known(self) -> bool:
        return self.fleet.known

    @fleet_known.setter
    def fleet_known(self, known: bool) -> None:
        self.fleet.known = known

    @property
    def commands_seq(self) -> int:
        return self.fleet.commands_seq

    @commands_seq.setter
    def commands_seq(self, seq: int) -> None:
        self.fleet.commands_seq = seq

    @property
    def workers(self) -> dict[str, WorkerView]:
        return self.fleet.workers

    @property
    def users(self) -> dict[uuid.UUID, UserView]:
        return self.accounts.users

    @property
    def plans(self) -> dict[str, PlanDefined]:
        return self.accounts.plans

    @property
    def ledger(self) -> dict[tuple[uuid.UUID, date], Ledger]:
        return self.quota.ledger

    @property
    def uploads(self) -> dict[uuid.UUID, UploadView]:
        return self.quota.uploads
