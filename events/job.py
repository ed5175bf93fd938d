"""The job aggregate: its states, the transitions the seeds allow, and the fold of its events.

The same fold runs in the scheduler (decisions), the projector (read models) and the gateway
(one job's authoritative view), so all three agree by construction.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Any

import msgspec

from events.errors import IllegalTransition
from events.types import (
    JobCancelled,
    JobCompleted,
    JobDispatched,
    JobFailed,
    JobQueued,
    JobRequeued,
    JobStarted,
    JobSubmitted,
    RecordedEvent,
)


class JobStatus(StrEnum):
    CREATED = "CREATED"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

# The seeds' state machine (ARCHITECTURE §6), plus RUNNING -> QUEUED for a lost attempt that is
# retried (docs/decisions/0003-requeue-lost-attempts.md) and QUEUED -> FAILED for a job that waited
# past the queue timeout (0006). CREATED -> CANCELLED is not reachable:
# CREATED and QUEUED are written in one transaction.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.CREATED: frozenset({JobStatus.QUEUED}),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class Job(msgspec.Struct, kw_only=True):
    """Current state of one job; its fields are the columns of the `jobs` read model."""

    id: uuid.UUID
    version: int
    status: JobStatus
    user_id: uuid.UUID
    user_ref: str | None
    frontend: str
    bot_id: str | None
    capability: str
    model: str
    params: dict[str, Any]
    priority: int
    cost_tokens: float
    reserved_tokens: float = 0.0
    quota_day: date | None = None
    reply_context: dict[str, Any] | None = None
    worker_id: str | None = None
    attempt: int = 0
    created_at: datetime
    queued_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    execution_time_seconds: float | None = None
    error: dict[str, Any] | None = None
    last_seq: int = 0
    request_digest: str | None = None  # not a read-model column: the scheduler's idempotency check


def _move(job: Job, to: JobStatus, event_type: str) -> None:
    if to not in TRANSITIONS[job.status]:
        raise IllegalTransition(job.id, job.status, event_type)
    job.status = to


def evolve(job: Job | None, rec: RecordedEvent) -> Job:
    """Apply one recorded event to a job's state; raises IllegalTransition on a forbidden move."""
    event = rec.data
    if job is None:
        if not isinstance(event, JobSubmitted) or rec.version != 1:
            raise IllegalTransition(rec.stream_id, None, rec.type)
        return Job(
            id=rec.stream_id,
            version=1,
            status=JobStatus.CREATED,
            user_id=event.user_id,
            user_ref=event.user_ref,
            frontend=event.frontend,
            bot_id=event.bot_id,
            capability=event.capability,
            model=event.model,
            params=event.params,
            priority=event.priority,
            cost_tokens=event.cost_tokens,
            reply_context=event.reply_context,
            created_at=rec.recorded_at,
            last_seq=rec.seq,
            request_digest=event.request_digest,
        )
    if rec.version != job.version + 1:
        raise IllegalTransition(job.id, f"{job.status} at version {job.version}", f"{rec.type}@{rec.version}")
    match event:
        case JobQueued(reserved_tokens=reserved, quota_day=day):
            _move(job, JobStatus.QUEUED, rec.type)
            job.queued_at = rec.recorded_at
            job.reserved_tokens = reserved
            job.quota_day = day
        case JobDispatched(worker_id=worker_id, attempt=attempt):
            _move(job, JobStatus.RUNNING, rec.type)
            job.worker_id = worker_id
            job.attempt = attempt
        case JobStarted():
            if job.status is not JobStatus.RUNNING:
                raise IllegalTransition(job.id, job.status, rec.type)
            job.started_at = rec.recorded_at
        case JobCompleted(execution_time_seconds=seconds, cost_tokens=cost):
            _move(job, JobStatus.COMPLETED, rec.type)
            job.started_at = job.started_at or event.started_at
            job.ended_at = rec.recorded_at
            job.execution_time_seconds = seconds
            job.cost_tokens = cost
        case JobFailed(code=code, message=message):
            _move(job, JobStatus.FAILED, rec.type)
            job.started_at = job.started_at or event.started_at
            job.cost_tokens = 0.0  # a failed job costs nothing; its reservation is released
            job.ended_at = rec.recorded_at
            job.error = {"code": code, "message": message}
        case JobCancelled(reason=reason, requested_by=by):
            _move(job, JobStatus.CANCELLED, rec.type)
            job.cost_tokens = 0.0  # a cancelled job costs nothing
            job.ended_at = rec.recorded_at
            job.error = {"code": "CANCELLED", "message": reason, "requested_by": by}
        case JobRequeued():
            _move(job, JobStatus.QUEUED, rec.type)
            job.worker_id = None
            job.started_at = None
            job.queued_at = rec.recorded_at
        case _:
            raise IllegalTransition(job.id, job.status, rec.type)
    job.version = rec.version
    job.last_seq = rec.seq
    return job


def fold(records: list[RecordedEvent]) -> Job | None:
    job: Job | None = None
    for rec in records:
        job = evolve(job, rec)
    return job
