"""Jobs: the fold of every unfinished job, and the commands and reports that move one along.

Submit (admitted by scheduler.admission), cancel, the workers' reports, retries of attempts lost
through no fault of the job, the queue timeout, and the dispatch pass that hands waiting jobs to
free slots. `emit_job` keeps every count that depends on a job's status (the queue, the users'
running jobs, the workers' slots, the quota ledger) in step with its events.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from base.catalog import Catalog
from events.job import Job, JobStatus, evolve
from events.types import (
    AnyEvent,
    ArtifactExpired,
    JobCancelled,
    JobCompleted,
    JobDispatched,
    JobFailed,
    JobQueued,
    JobRequeued,
    JobStarted,
    JobSubmitted,
    RecordedEvent,
    StreamType,
)
from scheduler import admission, rules
from scheduler.accounts import Accounts
from scheduler.admission import RefusalCode, Refused
from scheduler.effects import Emitter
from scheduler.fleet import Fleet
from scheduler.policy import Slot
from scheduler.queue import Queue
from scheduler.quota import Quota
from streams.messages import (
    CancelJob,
    CancelRunning,
    Decision,
    Dispatch,
    JobSummary,
    ReportCompleted,
    ReportFailed,
    ReportStarted,
    SubmitJob,
)

log = logging.getLogger(__name__)

EWMA_WEIGHT = 0.2  # weight of the newest measurement in a model's execution-time average

# Failures a worker reports that are not the job's fault: the engine's server could not be reached,
# or went away before any result, or NATS kept the result from being stored. The job gets another
# attempt (docs/engines.md).
RETRIED_CODES = frozenset({"ENGINE_UNAVAILABLE", "ENGINE_DISCONNECTED", "ARTIFACT_STORE_UNAVAILABLE"})


class JobBook:
    """Every unfinished job (and finished ones a command of the batch refers to), and their handlers."""

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

    def typical_seconds(self, model_name: str) -> float:
        return self.catalog.typical_seconds(model_name, self.execution_s.get(model_name))

    def summary(self, job: Job) -> JobSummary:
        position = self.queue.position(job) if job.status is JobStatus.QUEUED else None
        estimate = None
        if not job.status.terminal:
            estimate = rules.estimated_seconds(
                position, self.fleet.capable_slots(job.model), self.typical_seconds(job.model)
            )
        return JobSummary(
            job_id=job.id,
            status=job.status.value,
            cost_tokens=job.cost_tokens,
            queue_position=position,
            estimated_time_seconds=estimate,
        )

    # --- commands ------------------------------------------------------------------------------

    def submit(self, cmd: SubmitJob, reply_to: str | None, cause: str) -> None:
        existing = self.jobs.get(cmd.job_id)
        if existing is not None:
            if existing.user_id != cmd.user_id:
                self.out.refuse(reply_to, Refused(code=RefusalCode.JOB_ID_CONFLICT, detail="this job id is taken"))
            else:  # the same submit again (retry, redelivery, idempotency key): one effect
                self.out.reply(reply_to, Decision(ok=True), existing.id)
            return
        now = self.out.clock()
        quote = admission.quote(cmd, self.catalog, now)
        if isinstance(quote, Refused):
            self.out.refuse(reply_to, quote)
            return
        user = self.accounts.user_for(cmd, cause)  # may register a frontend's new user
        day = self.quota.quota_day(now)
        standing = None
        if user is not None:
            ledger = self.quota.ledger.get((user.id, day))
            standing = admission.Standing(
                plan=self.accounts.plans[user.plan],
                requests=self.quota.window(user.id, now),
                queued=self.queue.user_queued[user.id],
                used=ledger.used if ledger else 0.0,
                reserved=ledger.reserved if ledger else 0.0,
            )
        result = admission.admit(
            quote,
            standing,
            self.fleet,
            now=now,
            zone=self.quota.zone,
            typical_seconds=self.typical_seconds(quote.model.name),
        )
        if result.counted and user is not None:
            self.quota.count_request(user.id, now)
        if isinstance(result, Refused):
            self.out.refuse(reply_to, result)
            return
        assert user is not None  # admitted
        plan = result.plan
        self.emit_job(
            cmd.job_id,
            JobSubmitted(
                user_id=user.id,
                user_ref=cmd.user_ref,
                frontend=cmd.frontend,
                bot_id=cmd.bot_id,
                capability=cmd.capability,
                model=quote.model.name,
                params=cmd.params,
                priority=plan.priority,
                cost_tokens=quote.cost,
                reply_context=cmd.reply_context,
            ),
            cause,
        )
        job = self.emit_job(
            cmd.job_id,
            JobQueued(
                priority=plan.priority,
                reserved_tokens=quote.cost,
                quota_day=day,
                reason=f"admitted on the {plan.name} plan",
            ),
            cause,
        )
        self.queue.enqueue(job)
        self.out.effects.activated.append(job.id)
        self.out.reply(reply_to, Decision(ok=True, user_id=user.id, rate=result.rate), job.id)

    def cancel(self, cmd: CancelJob, reply_to: str | None, cause: str) -> None:
        job = self.jobs.get(cmd.job_id)
        if job is None or job.user_id != cmd.user_id:
            self.out.refuse(reply_to, Refused(code=RefusalCode.JOB_NOT_FOUND, detail="no such job"))
            return
        if job.status.terminal:
            self.out.refuse(
                reply_to, Refused(code=RefusalCode.JOB_TERMINAL, detail=f"job is already {job.status.value}"), job.id
            )
            return
        was_running = job.status is JobStatus.RUNNING
        worker_id, attempt = job.worker_id, job.attempt
        job = self.emit_job(
            job.id,
            JobCancelled(
                reason=cmd.reason, requested_by="user", released_tokens=job.reserved_tokens, quota_day=job.quota_day
            ),
            cause,
        )
        if was_running and worker_id:
            worker = self.fleet.workers.get(worker_id)
            if worker:
                worker.take(job.id, job.model, cancelled=True)
            self.out.effects.controls.append((worker_id, CancelRunning(job_id=job.id, attempt=attempt)))
        self.out.reply(reply_to, Decision(ok=True), job.id)

    # --- reports -------------------------------------------------------------------------------

    def _current_attempt(self, job_id: uuid.UUID, worker_id: str, attempt: int) -> Job | None:
        job = self.jobs.get(job_id)
        if job is None or job.status is not JobStatus.RUNNING or job.attempt != attempt or job.worker_id != worker_id:
            return None
        return job

    def started(self, cmd: ReportStarted, cause: str) -> None:
        job = self._current_attempt(cmd.job_id, cmd.worker_id, cmd.attempt)
        if job is not None and job.started_at is None:
            self.emit_job(job.id, JobStarted(worker_id=cmd.worker_id, attempt=cmd.attempt), cause)

    def completed(self, cmd: ReportCompleted, cause: str) -> None:
        self.fleet.let_go(cmd.worker_id, cmd.job_id)
        job = self._current_attempt(cmd.job_id, cmd.worker_id, cmd.attempt)
        if job is None:
            accepted = self.jobs.get(cmd.job_id)
            if not (accepted and accepted.status is JobStatus.COMPLETED and accepted.attempt == cmd.attempt):
                log.info("refused result of job %s attempt %s from %s", cmd.job_id, cmd.attempt, cmd.worker_id)
                self.out.effects.discard_objects.extend(a.object_name for a in cmd.artifacts if a.object_name)
            return
        model = self.catalog.get(job.model)
        charge = job.cost_tokens
        if model is not None and job.quota_day is not None:
            charge = min(job.reserved_tokens, model.actual_cost(job.params, cmd.usage))
        self.emit_job(
            job.id,
            JobCompleted(
                worker_id=cmd.worker_id,
                attempt=cmd.attempt,
                artifacts=cmd.artifacts,
                execution_time_seconds=cmd.execution_time_seconds,
                cost_tokens=charge,
                reserved_tokens=job.reserved_tokens,
                quota_day=job.quota_day,
                usage=cmd.usage,
                started_at=cmd.started_at if job.started_at is None else None,
            ),
            cause,
        )
        previous = self.execution_s.get(job.model)
        seconds = cmd.execution_time_seconds
        self.execution_s[job.model] = seconds if previous is None else previous + EWMA_WEIGHT * (seconds - previous)

    def failed(self, cmd: ReportFailed, cause: str) -> None:
        self.fleet.let_go(cmd.worker_id, cmd.job_id)
        job = self._current_attempt(cmd.job_id, cmd.worker_id, cmd.attempt)
        if job is None:
            return
        if cmd.code in RETRIED_CODES:  # not the job's fault: another attempt, here or on another worker
            self.retry(job, cmd.code, f"{cmd.code}: {cmd.message}", cause)
            return
        self.fail(
            job,
            cmd.code,
            cmd.message,
            cause,
            worker_id=cmd.worker_id,
            attempt=cmd.attempt,
            started_at=cmd.started_at if job.started_at is None else None,
        )

    def retry(self, job: Job, code: str, reason: str, cause: str) -> None:
        """End a running attempt that was lost through no fault of the job's: requeue the job for a
        new attempt (its place in the queue kept; the old attempt fenced, so a late result of it is
        refused), or fail it with `code` once it has had its attempts."""
        worker_id, attempt = job.worker_id, job.attempt
        if attempt < self.max_attempts:
            job = self.emit_job(job.id, JobRequeued(worker_id=worker_id or "", attempt=attempt, reason=reason), cause)
            self.queue.enqueue(job)
        else:
            self.fail(
                job,
                code,
                f"{reason} (attempt {attempt} of {self.max_attempts})",
                cause,
                worker_id=worker_id,
                attempt=attempt,
            )

    def fail(
        self,
        job: Job,
        code: str,
        message: str,
        cause: str,
        *,
        worker_id: str | None = None,
        attempt: int | None = None,
        started_at: datetime | None = None,
    ) -> Job:
        return self.emit_job(
            job.id,
            JobFailed(
                code=code,
                message=message,
                worker_id=worker_id,
                attempt=attempt,
                released_tokens=job.reserved_tokens,
                quota_day=job.quota_day,
                started_at=started_at,
            ),
            cause,
        )

    # --- time ----------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Requeue jobs running on no known worker; fail jobs that waited too long."""
        if self.fleet.connected and self.fleet.known and now - self._last_orphan_check >= 1.0:
            self._last_orphan_check = now
            self._requeue_orphans(now)
        wall = self.out.clock()
        if wall - self._last_timeout_check >= 1.0:
            self._last_timeout_check = wall
            timeout = self.queue_timeout_s
            for waiting in list(self.queue.policy):
                if wall - waiting.enqueued_at > timeout:
                    job = self.jobs[waiting.job_id]
                    self.fail(
                        job,
                        "QUEUE_TIMEOUT",
                        f"no worker took the job within {timeout:.0f}s; "
                        f"its {job.reserved_tokens:g} reserved tokens are released",
                        "scheduler:queue-timeout",
                    )

    def _requeue_orphans(self, now: float) -> None:
        """Requeue jobs running on a worker the scheduler does not know, for longer than a worker
        timeout: a worker that said goodbye, or vanished from the bucket, before this scheduler
        loaded its jobs. No heartbeat of it will ever come to judge it by."""
        orphans = {}
        for job in [j for j in self.jobs.values() if j.status is JobStatus.RUNNING]:
            if job.worker_id in self.fleet.workers:
                continue
            since = orphans[job.id] = self._orphans.get(job.id, now)
            if now - since > self.fleet.worker_timeout_s:
                del orphans[job.id]
                self.retry(job, "WORKER_LOST", f"worker {job.worker_id} is not online", "scheduler:worker-lost")
        self._orphans = orphans

    def expire_artifacts(self, expired: list[tuple[uuid.UUID, uuid.UUID, str | None]]) -> None:
        """Record the expiry of artifacts past their time (id, job id, object name); their bytes are
        removed from the object store once the events are committed."""
        now = datetime.fromtimestamp(self.out.clock(), UTC)
        for artifact_id, job_id, object_name in expired:
            self.out.emit(
                StreamType.ARTIFACT,
                artifact_id,
                1,
                ArtifactExpired(job_id=job_id, object_name=object_name, expired_at=now),
                "scheduler:artifact-expiry",
            )
            if object_name:
                self.out.effects.discard_objects.append(object_name)

    # --- dispatch ------------------------------------------------------------------------------

    def schedule(self) -> None:
        """Hand waiting jobs to workers with free slots, as the queue policy picks them."""
        policy = self.queue.policy
        if not len(policy):
            return
        now = self.out.clock()
        for view in self.fleet.workers.values():
            while view.can_take():
                models = view.models_with_room()
                if not models:
                    break
                slot = Slot(
                    worker_id=view.status.worker_id,
                    models=models,
                    loaded=frozenset(view.loaded),
                    max_resolution=view.status.max_resolution,
                )
                pick = policy.pick(slot, now, self.queue.user_running, self.accounts.concurrency_limit)
                if pick is None:
                    break
                job = self.jobs[pick.job.job_id]
                job = self.emit_job(
                    job.id,
                    JobDispatched(worker_id=view.status.worker_id, attempt=job.attempt + 1, reason=pick.reason),
                    "scheduler:dispatch",
                )
                view.take(job.id, job.model)
                view.loaded.add(job.model)  # until its next heartbeat says otherwise
                self.out.effects.dispatches.append((view.status.worker_id, self.dispatch_message(job)))

    def dispatch_message(self, job: Job) -> Dispatch:
        """The dispatch of a running job's attempt, addressed to the worker instance it was given to
        when that instance is known (a restarted worker drops what was meant for its previous life)."""
        model = self.catalog[job.model]
        view = self.fleet.workers.get(job.worker_id or "")
        return Dispatch(
            job_id=job.id,
            attempt=job.attempt,
            capability=job.capability,
            model=job.model,
            params=job.params,
            timeout_seconds=model.timeout_seconds,
            dispatched_at=datetime.now(UTC),
            instance_id=view.status.instance_id if view is not None and not view.gone else None,
        )
