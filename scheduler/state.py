"""The scheduler's in-memory model and its decisions.

Everything here is synchronous and does no I/O: a handler reads the state, emits events (which
evolve the state at once, so later commands in the same batch see them) and records the effects
to carry out after the batch commits. If the commit fails the whole state is thrown away and
rebuilt from PostgreSQL, so a handler never needs to undo anything.
"""

from __future__ import annotations

import heapq
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from events.job import Job, JobStatus, evolve
from events.store import PendingEvent
from events.types import (
    AnyEvent,
    ApiKeyIssued,
    FrontendKeyIssued,
    JobCancelled,
    JobCompleted,
    JobDispatched,
    JobFailed,
    JobQueued,
    JobRequeued,
    JobStarted,
    JobSubmitted,
    PlanDefined,
    RecordedEvent,
    UserRegistered,
    frontend_stream_id,
    user_stream_id,
)
from streams.messages import (
    CancelJob,
    CancelRunning,
    CreateFrontendKey,
    CreateUser,
    Decision,
    Dispatch,
    JobSummary,
    ReportCompleted,
    ReportFailed,
    ReportStarted,
    SubmitJob,
    WorkerStatus,
)
from tessera import catalog

log = logging.getLogger(__name__)


@dataclass
class WorkerView:
    status: WorkerStatus
    last_seen: float
    running: set[uuid.UUID] = field(default_factory=set)
    cancelling: set[uuid.UUID] = field(default_factory=set)
    gone: bool = False  # said goodbye, or replaced by a new instance

    @property
    def free_slots(self) -> int:
        return self.status.slots - len(self.running) - len(self.cancelling)

    def can_take(self) -> bool:
        return not self.gone and not self.status.draining and self.free_slots > 0


@dataclass
class UserView:
    id: uuid.UUID
    plan: str
    version: int


@dataclass
class Effects:
    """What a batch decided, carried out once its events are committed."""

    pending: list[PendingEvent] = field(default_factory=list)
    replies: list[tuple[str, uuid.UUID | None, Decision]] = field(default_factory=list)
    dispatches: list[tuple[str, Dispatch]] = field(default_factory=list)
    controls: list[tuple[str, CancelRunning]] = field(default_factory=list)
    purge_workers: list[str] = field(default_factory=list)
    discard_objects: list[str] = field(default_factory=list)
    activated: list[uuid.UUID] = field(default_factory=list)
    finished: list[uuid.UUID] = field(default_factory=list)


class SchedulerState:
    def __init__(self, *, max_attempts: int = 3, worker_timeout_s: float = 10.0) -> None:
        self.max_attempts = max_attempts
        self.worker_timeout_s = worker_timeout_s
        self.jobs: dict[uuid.UUID, Job] = {}
        self.plans: dict[str, PlanDefined] = {}
        self.users: dict[uuid.UUID, UserView] = {}
        self.frontends: dict[uuid.UUID, int] = {}  # frontend stream id -> version
        self.workers: dict[str, WorkerView] = {}
        # Waiting jobs: per model, per priority, a heap of (enqueue order, job id).
        self._queues: dict[str, dict[int, list[tuple[int, uuid.UUID]]]] = {}
        self._waiting: dict[uuid.UUID, int] = {}  # job id -> its enqueue order
        self._depth: dict[tuple[str, int], int] = {}
        self._order = 0
        self.effects = Effects()

    # --- loading -----------------------------------------------------------------------------

    def load(self, records: list[RecordedEvent], head_seq: int) -> None:
        """Rebuild from the events of plans, frontends and active jobs (in log order)."""
        self._order = head_seq
        queued_at_seq: dict[uuid.UUID, int] = {}
        for rec in records:
            self.apply(rec)
            if isinstance(rec.data, JobQueued | JobRequeued):
                queued_at_seq[rec.stream_id] = rec.seq
        for job in self.jobs.values():
            if job.status is JobStatus.QUEUED:
                self._enqueue(job, order=queued_at_seq[job.id])
            elif job.status is JobStatus.RUNNING and job.worker_id:
                worker = self.workers.get(job.worker_id)
                if worker:
                    worker.running.add(job.id)

    def apply(self, rec: RecordedEvent) -> None:
        """Fold one stored event into the state (loading, and events this process emits)."""
        event = rec.data
        if rec.stream_type == "job":
            self.jobs[rec.stream_id] = evolve(self.jobs.get(rec.stream_id), rec)
        elif isinstance(event, PlanDefined):
            self.plans[event.tier] = event
        elif isinstance(event, UserRegistered):
            self.users[rec.stream_id] = UserView(id=rec.stream_id, plan=event.plan, version=rec.version)
        elif isinstance(event, ApiKeyIssued):
            user = self.users.get(rec.stream_id)
            if user:
                user.version = rec.version
        elif isinstance(event, FrontendKeyIssued):
            self.frontends[rec.stream_id] = rec.version

    def _next_order(self) -> int:
        self._order += 1
        return self._order

    # --- emitting ----------------------------------------------------------------------------

    def emit(self, stream_type: str, stream_id: uuid.UUID, version: int, event: AnyEvent, cause: str | None) -> None:
        pending = PendingEvent(stream_type=stream_type, stream_id=stream_id, version=version, data=event,
                               causation_id=cause)
        self.effects.pending.append(pending)
        self.apply(pending.recorded(seq=0))

    def emit_job(self, job_id: uuid.UUID, event: AnyEvent, cause: str | None) -> Job:
        current = self.jobs.get(job_id)
        self.emit("job", job_id, (current.version if current else 0) + 1, event, cause)
        job = self.jobs[job_id]
        if job.status.terminal:
            self._dequeue(job)
            self._release_slot(job)
            self.effects.finished.append(job_id)
        return job

    def take_effects(self) -> Effects:
        effects, self.effects = self.effects, Effects()
        return effects

    def forget_terminal(self, job_ids: list[uuid.UUID]) -> None:
        """Drop jobs that a commit finished; a duplicate command reloads them from the store."""
        for job_id in job_ids:
            job = self.jobs.get(job_id)
            if job is not None and job.status.terminal:
                del self.jobs[job_id]

    # --- queue -------------------------------------------------------------------------------

    def _enqueue(self, job: Job, order: int | None = None) -> None:
        order = self._next_order() if order is None else order
        heapq.heappush(self._queues.setdefault(job.model, {}).setdefault(job.priority, []), (order, job.id))
        self._waiting[job.id] = order
        key = (job.capability, job.priority)
        self._depth[key] = self._depth.get(key, 0) + 1

    def _dequeue(self, job: Job) -> None:
        """Count a job out of the queue; its heap entry is skipped lazily when it surfaces."""
        if self._waiting.pop(job.id, None) is not None:
            self._depth[(job.capability, job.priority)] -= 1

    def queue_position(self, job: Job) -> int:
        """Jobs that wait for the same capability ahead of this one, which is assumed newest in its tier."""
        return sum(depth for (cap, prio), depth in self._depth.items()
                   if cap == job.capability and prio >= job.priority) - 1

    def _is_waiting(self, job_id: uuid.UUID) -> bool:
        return job_id in self._waiting

    def _next_job_for(self, worker: WorkerView) -> Job | None:
        """Highest priority first; oldest first within a priority; only models the worker serves."""
        best: tuple[int, int, uuid.UUID] | None = None
        for model in worker.status.models:
            for prio, heap in self._queues.get(model, {}).items():
                while heap and not self._is_waiting(heap[0][1]):
                    heapq.heappop(heap)
                if heap and (best is None or (-prio, heap[0][0]) < (best[0], best[1])):
                    best = (-prio, heap[0][0], heap[0][1])
        if best is None:
            return None
        job = self.jobs[best[2]]
        heapq.heappop(self._queues[job.model][job.priority])
        return job

    def _release_slot(self, job: Job) -> None:
        if job.worker_id and job.worker_id in self.workers:
            self.workers[job.worker_id].running.discard(job.id)

    # --- command handlers --------------------------------------------------------------------

    def reply(self, reply_to: str | None, decision: Decision, job_id: uuid.UUID | None = None) -> None:
        if reply_to:
            self.effects.replies.append((reply_to, job_id, decision))

    def summary(self, job: Job) -> JobSummary:
        model = catalog.CATALOG.get(job.model)
        position = self.queue_position(job) if job.status is JobStatus.QUEUED else None
        estimate = None
        if model and not job.status.terminal:
            slots = sum(w.status.slots for w in self.workers.values() if not w.gone and job.model in w.status.models)
            waves = ((position or 0) // max(slots, 1)) + 1
            estimate = round(waves * model.typical_seconds, 3)
        return JobSummary(job_id=job.id, status=job.status.value, cost_tokens=job.cost_tokens,
                          queue_position=position, estimated_time_seconds=estimate)

    def submit(self, cmd: SubmitJob, reply_to: str | None, cause: str) -> None:
        existing = self.jobs.get(cmd.job_id)
        if existing is not None:
            if existing.user_id != cmd.user_id:
                self.reply(reply_to, Decision(ok=False, status=409, code="JOB_ID_CONFLICT",
                                              detail="this job id is taken"))
            else:  # the same submit again (retry, redelivery, idempotency key): one effect
                self.reply(reply_to, Decision(ok=True, status=202), existing.id)
            return
        if datetime.now(UTC) > cmd.deadline:
            self.reply(reply_to, Decision(ok=False, status=503, code="SUBMIT_EXPIRED",
                                          detail="the submit arrived after its deadline; nothing was created"))
            return
        if cmd.capability not in catalog.CAPABILITIES:
            self.reply(reply_to, Decision(ok=False, status=422, code="UNKNOWN_CAPABILITY",
                                          detail=f"unknown capability {cmd.capability!r}; "
                                                 f"known: {', '.join(catalog.CAPABILITIES)}"))
            return
        model = catalog.resolve(cmd.capability, cmd.model)
        if model is None:
            detail = (f"model {cmd.model!r} does not serve capability {cmd.capability!r}" if cmd.model
                      else f"no model serves capability {cmd.capability!r} yet")
            self.reply(reply_to, Decision(ok=False, status=422, code="UNKNOWN_MODEL", detail=detail))
            return
        user = self._user_for(cmd, cause)
        if user is None:
            self.reply(reply_to, Decision(ok=False, status=401, code="UNKNOWN_USER", detail="user is not registered"))
            return
        plan = self.plans[user.plan]
        self.emit_job(cmd.job_id, JobSubmitted(
            user_id=user.id, user_ref=cmd.user_ref, frontend=cmd.frontend, bot_id=cmd.bot_id,
            capability=cmd.capability, model=model.name, params=cmd.params, priority=plan.priority,
            cost_tokens=model.cost(cmd.params), reply_context=cmd.reply_context,
        ), cause)
        job = self.emit_job(cmd.job_id, JobQueued(priority=plan.priority), cause)
        self._enqueue(job)
        self.effects.activated.append(job.id)
        self.reply(reply_to, Decision(ok=True, status=202, user_id=user.id), job.id)

    def _user_for(self, cmd: SubmitJob, cause: str) -> UserView | None:
        user = self.users.get(cmd.user_id)
        if user is not None:
            return user
        if not cmd.user_ref or ":" not in cmd.user_ref:
            return None
        platform, platform_user_id = cmd.user_ref.split(":", 1)
        if user_stream_id(platform, platform_user_id) != cmd.user_id:
            return None
        self.emit("user", cmd.user_id, 1, UserRegistered(platform=platform, platform_user_id=platform_user_id,
                                                         plan="free"), cause)
        return self.users[cmd.user_id]

    def cancel(self, cmd: CancelJob, reply_to: str | None, cause: str) -> None:
        job = self.jobs.get(cmd.job_id)
        if job is None or job.user_id != cmd.user_id:
            self.reply(reply_to, Decision(ok=False, status=404, code="JOB_NOT_FOUND", detail="no such job"))
            return
        if job.status.terminal:
            self.reply(reply_to, Decision(ok=False, status=409, code="JOB_TERMINAL",
                                          detail=f"job is already {job.status.value}"), job.id)
            return
        was_running = job.status is JobStatus.RUNNING
        worker_id, attempt = job.worker_id, job.attempt
        job = self.emit_job(job.id, JobCancelled(reason=cmd.reason, requested_by="user"), cause)
        if was_running and worker_id:
            worker = self.workers.get(worker_id)
            if worker:
                worker.cancelling.add(job.id)  # its slot stays taken until the worker lets go
            self.effects.controls.append((worker_id, CancelRunning(job_id=job.id, attempt=attempt)))
        self.reply(reply_to, Decision(ok=True, status=202), job.id)

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
        self._let_go(cmd.worker_id, cmd.job_id)
        job = self._current_attempt(cmd.job_id, cmd.worker_id, cmd.attempt)
        if job is None:
            accepted = self.jobs.get(cmd.job_id)
            if not (accepted and accepted.status is JobStatus.COMPLETED and accepted.attempt == cmd.attempt):
                log.info("refused result of job %s attempt %s from %s", cmd.job_id, cmd.attempt, cmd.worker_id)
                self.effects.discard_objects.extend(a.object_name for a in cmd.artifacts if a.object_name)
            return
        self.emit_job(job.id, JobCompleted(
            worker_id=cmd.worker_id, attempt=cmd.attempt, artifacts=cmd.artifacts,
            execution_time_seconds=cmd.execution_time_seconds, cost_tokens=job.cost_tokens,
        ), cause)

    def failed(self, cmd: ReportFailed, cause: str) -> None:
        self._let_go(cmd.worker_id, cmd.job_id)
        job = self._current_attempt(cmd.job_id, cmd.worker_id, cmd.attempt)
        if job is not None:
            self.emit_job(job.id, JobFailed(code=cmd.code, message=cmd.message, worker_id=cmd.worker_id,
                                            attempt=cmd.attempt), cause)

    def _let_go(self, worker_id: str, job_id: uuid.UUID) -> None:
        worker = self.workers.get(worker_id)
        if worker:
            worker.cancelling.discard(job_id)

    def create_user(self, cmd: CreateUser, reply_to: str | None, cause: str) -> None:
        if cmd.plan not in self.plans:
            self.reply(reply_to, Decision(ok=False, status=422, code="UNKNOWN_PLAN", detail=f"no plan {cmd.plan!r}"))
            return
        stream_id = user_stream_id(cmd.platform, cmd.platform_user_id)
        user = self.users.get(stream_id)
        if user is None:
            self.emit("user", stream_id, 1, UserRegistered(platform=cmd.platform, platform_user_id=cmd.platform_user_id,
                                                           plan=cmd.plan, display_name=cmd.display_name), cause)
            user = self.users[stream_id]
        self.emit("user", stream_id, user.version + 1,
                  ApiKeyIssued(key_id=cmd.key_id, key_hash=cmd.key_hash, prefix=cmd.key_prefix), cause)
        self.reply(reply_to, Decision(ok=True, status=201, user_id=stream_id))

    def create_frontend_key(self, cmd: CreateFrontendKey, reply_to: str | None, cause: str) -> None:
        stream_id = frontend_stream_id(cmd.frontend, cmd.bot_id)
        version = self.frontends.get(stream_id, 0) + 1
        self.emit("frontend", stream_id, version, FrontendKeyIssued(
            frontend=cmd.frontend, bot_id=cmd.bot_id, key_id=cmd.key_id, key_hash=cmd.key_hash,
            prefix=cmd.key_prefix), cause)
        self.reply(reply_to, Decision(ok=True, status=201))

    # --- workers -----------------------------------------------------------------------------

    def worker_seen(self, status: WorkerStatus, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        view = self.workers.get(status.worker_id)
        if view is not None and view.status.instance_id != status.instance_id:
            self._lose_worker(view, "the worker restarted; its running attempts are lost")
            view = None
        if view is None:
            view = WorkerView(status=status, last_seen=now)
            self.workers[status.worker_id] = view
            view.running = {j.id for j in self.jobs.values()
                            if j.status is JobStatus.RUNNING and j.worker_id == status.worker_id}
        view.status = status
        view.last_seen = now
        view.cancelling &= set(status.running)

    def worker_gone(self, worker_id: str) -> None:
        view = self.workers.get(worker_id)
        if view is not None:
            self._lose_worker(view, "the worker left")

    def _lose_worker(self, view: WorkerView, reason: str) -> None:
        view.gone = True
        for job_id in list(view.running):
            job = self.jobs.get(job_id)
            if job is None or job.status is not JobStatus.RUNNING or job.worker_id != view.status.worker_id:
                continue
            if job.attempt < self.max_attempts:
                job = self.emit_job(job.id, JobRequeued(worker_id=view.status.worker_id, attempt=job.attempt,
                                                        reason=reason), "scheduler:worker-lost")
                self._enqueue(job)
            else:
                self.emit_job(job.id, JobFailed(code="WORKER_LOST", message=f"{reason} (attempt {job.attempt} of "
                              f"{self.max_attempts})", worker_id=view.status.worker_id, attempt=job.attempt),
                              "scheduler:worker-lost")
        view.running.clear()
        view.cancelling.clear()
        self.effects.purge_workers.append(view.status.worker_id)

    def tick(self, now: float | None = None) -> None:
        """Declare workers lost whose heartbeats stopped; forget the ones already handled."""
        now = time.monotonic() if now is None else now
        for worker_id, view in list(self.workers.items()):
            if view.gone:
                if not view.running:
                    del self.workers[worker_id]
                continue
            if now - view.last_seen > self.worker_timeout_s:
                log.warning("worker %s missed its heartbeats for %.1fs: declared lost", worker_id, now - view.last_seen)
                self._lose_worker(view, f"no heartbeat for {now - view.last_seen:.0f}s")
                del self.workers[worker_id]

    def schedule(self) -> None:
        """Hand waiting jobs to workers with free slots."""
        for view in self.workers.values():
            while view.can_take():
                job = self._next_job_for(view)
                if job is None:
                    break
                attempt = job.attempt + 1
                reason = (f"priority {job.priority}, oldest waiting for {job.model}; "
                          f"{view.status.worker_id} had {view.free_slots} free slot(s)")
                job = self.emit_job(job.id, JobDispatched(worker_id=view.status.worker_id, attempt=attempt,
                                                          reason=reason), "scheduler:dispatch")
                self._dequeue(job)
                view.running.add(job.id)
                self.effects.dispatches.append((view.status.worker_id, self.dispatch_message(job)))

    def dispatch_message(self, job: Job) -> Dispatch:
        model = catalog.CATALOG[job.model]
        return Dispatch(job_id=job.id, attempt=job.attempt, capability=job.capability, model=job.model,
                        params=job.params, timeout_seconds=model.timeout_seconds, dispatched_at=datetime.now(UTC))
