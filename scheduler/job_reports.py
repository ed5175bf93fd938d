"""What moves a running job along besides its owner: the workers' reports and the clock.

The started, completed and failed reports of an attempt; retries of attempts lost through no fault
of the job; jobs running on no known worker; the queue timeout; the expiry of artifacts.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from events.job import Job, JobStatus
from events.types import ArtifactExpired, JobCompleted, JobFailed, JobRequeued, JobStarted, StreamType
from scheduler.job_fold import JobFold
from streams.messages import ReportCompleted, ReportFailed, ReportStarted

log = logging.getLogger(__name__)


EWMA_WEIGHT = 0.2  # weight of the newest measurement in a model's execution-time average

# Failures a worker reports that are not the job's fault: the engine's server could not be reached,
# or went away before any result, or NATS kept the result from being stored. The job gets another
# attempt (docs/engines.md).
RETRIED_CODES = frozenset({"ENGINE_UNAVAILABLE", "ENGINE_DISCONNECTED", "ARTIFACT_STORE_UNAVAILABLE"})


class JobReports(JobFold):
    """The handlers of the workers' reports and of time, as `scheduler.jobs.JobBook` has them."""

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
        self.completions[job.model] += 1

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
            self.observe_rates(wall)
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
