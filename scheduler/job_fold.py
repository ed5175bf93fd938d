"""The fold of every unfinished job, and the counts that move with it.

`emit_job` keeps every count that depends on a job's status (the queue, the users' running jobs,
the workers' slots, the quota ledger) in step with its events. The base of `scheduler.jobs.JobBook`,
whose handlers (`scheduler.jobs`, `scheduler.job_reports`) move jobs along through it.
"""

from __future__ import annotations

import uuid
from collections import Counter

from base.catalog import Catalog
from events.job import Job, JobStatus, evolve
from events.types import AnyEvent, JobQueued, RecordedEvent, StreamType
from scheduler import rules
from scheduler.accounts import Accounts
from scheduler.effects import Emitter
from scheduler.fleet import Fleet
from scheduler.queue import Queue
from scheduler.quota import Quota
from streams.messages import JobSummary


class JobFold:
    """Every unfinished job (and finished ones a command of the batch refers to), and their counts."""

    def __init__(
        self,
        out: Emitter,
        catalog: Catalog,
        accounts: Accounts,
        quota: Quota,
        fleet: Fleet,
        queue: Queue,
        jobs: dict[uuid.UUID, Job],
        *,
        max_attempts: int,
        queue_timeout_s: float,
    ) -> None:
        self.out = out
        self.catalog = catalog
        self.accounts = accounts
        self.quota = quota
        self.fleet = fleet
        self.queue = queue
        self.jobs = jobs
        self.max_attempts = max_attempts
        self.queue_timeout_s = queue_timeout_s
        self.execution_s: dict[str, float] = {}  # model -> moving average of measured execution time
        # Model -> its completions since this leader started, and the rate its slots served them at
        # while jobs waited for it (sampled once a second): what ETAs divide the jobs ahead by.
        self.completions: Counter[str] = Counter()
        self.rates: dict[str, rules.ServiceRate] = {}
        self._last_timeout_check = 0.0
        self._orphans: dict[uuid.UUID, float] = {}  # running job on no known worker -> since when
        self._last_orphan_check = 0.0

    def apply(self, rec: RecordedEvent) -> None:
        """Fold one event of a job stream."""
        self.jobs[rec.stream_id] = evolve(self.jobs.get(rec.stream_id), rec)

    def emit_job(self, job_id: uuid.UUID, event: AnyEvent, cause: str | None) -> Job:
        """Record a job event and keep every count that depends on the job's status in step."""
        current = self.jobs.get(job_id)
        before = current.status if current else None
        worker_id = current.worker_id if current else None  # before the event: a requeue clears it
        self.out.emit(StreamType.JOB, job_id, (current.version if current else 0) + 1, event, cause)
        job = self.jobs[job_id]
        after = job.status
        if before is JobStatus.QUEUED and after is not JobStatus.QUEUED:
            self.queue.dequeue(job)
        if before is JobStatus.RUNNING and after is not JobStatus.RUNNING:
            self.queue.user_running[job.user_id] -= 1
            self.fleet.release_slot(job, worker_id)
        if after is JobStatus.RUNNING and before is not JobStatus.RUNNING:
            self.queue.user_running[job.user_id] += 1
        if isinstance(event, JobQueued) and job.quota_day is not None:
            self.quota.of(job.user_id, job.quota_day).reserved += job.reserved_tokens
        if after.terminal:
            self.queue.admitted.pop(job_id, None)
            if job.quota_day is not None:
                ledger = self.quota.of(job.user_id, job.quota_day)
                ledger.reserved -= job.reserved_tokens
                if after is JobStatus.COMPLETED:
                    ledger.used += job.cost_tokens
            self.out.effects.finished.append(job_id)
        return job

    def forget_terminal(self, job_ids: list[uuid.UUID]) -> None:
        """Drop jobs that a commit finished; a duplicate command reloads them from the store."""
        for job_id in job_ids:
            job = self.jobs.get(job_id)
            if job is not None and job.status.terminal:
                del self.jobs[job_id]

    # --- reading -------------------------------------------------------------------------------

    def observe_rates(self, now: float) -> None:
        """Sample every model's service rate, counting it backlogged while its capability has jobs waiting."""
        waiting = {capability for (capability, _), depth in self.queue.depth.items() if depth > 0}
        for model in self.catalog:
            rate = self.rates.setdefault(model.name, rules.ServiceRate())
            rate.observe(now, self.completions[model.name], model.capability in waiting)

    def typical_seconds(self, model_name: str) -> float:
        return self.catalog.typical_seconds(model_name, self.execution_s.get(model_name))

    def summary(self, job: Job) -> JobSummary:
        position = self.queue.position(job) if job.status is JobStatus.QUEUED else None
        estimate = None
        if not job.status.terminal:
            rate = self.rates.get(job.model)
            estimate = rules.estimated_seconds(
                position,
                self.fleet.capable_slots(job.model),
                self.typical_seconds(job.model),
                rate.per_s if rate else None,
            )
        return JobSummary(
            job_id=job.id,
            status=job.status.value,
            cost_tokens=job.cost_tokens,
            queue_position=position,
            estimated_time_seconds=estimate,
        )
