"""The scheduler's in-memory model and its decisions.

Everything here is synchronous and does no I/O: a handler reads the state, emits events (which
evolve the state at once, so later commands in the same batch see them) and records the effects
to carry out after the batch commits. If the commit fails the whole state is thrown away and
rebuilt from PostgreSQL, so a handler never needs to undo anything.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from events.job import Job, JobStatus, evolve
from events.store import PendingEvent
from events.types import (
    AnyEvent,
    ApiKeyIssued,
    ApiKeyRevoked,
    ArtifactExpired,
    FrontendKeyIssued,
    FrontendKeyRevoked,
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
    UploadDeleted,
    UploadExpired,
    UploadStored,
    UserPlanChanged,
    UserRegistered,
    frontend_stream_id,
    plan_stream_id,
    user_stream_id,
)
from scheduler.policy import PolicyConfig, QueuePolicy, Slot, TesseraPolicy, Waiting
from streams.messages import (
    CancelJob,
    CancelRunning,
    ChangeUserPlan,
    CreateFrontendKey,
    CreateUser,
    Decision,
    DefinePlan,
    DeleteUpload,
    Dispatch,
    IssueApiKey,
    JobSummary,
    RateLimit,
    ReportCompleted,
    ReportFailed,
    ReportStarted,
    RevokeKey,
    StoreUpload,
    SubmitJob,
    WorkerStatus,
)
from base import catalog

log = logging.getLogger(__name__)


@dataclass
class WorkerView:
    """A worker as the scheduler sees it, and the slots its jobs take.

    A job takes a slot of the worker and one of the pool of the engine that serves its model,
    from its dispatch until its report; a cancelled job keeps both until the worker lets go.
    """

    status: WorkerStatus
    last_seen: float
    running: dict[uuid.UUID, str] = field(default_factory=dict)  # job -> model
    cancelling: dict[uuid.UUID, str] = field(default_factory=dict)  # job -> model
    loaded: set[str] = field(default_factory=set)  # models it holds: heartbeat, plus what it was sent since
    gone: bool = False  # said goodbye, or replaced by a new instance
    # Attempts the scheduler believes this worker runs that its heartbeats did not list: job ->
    # (when first missed, the worker's `reported_seq` then). Requeued once missed for a grace
    # period with every report the worker had stored by then read.
    missing: dict[uuid.UUID, tuple[float, int]] = field(default_factory=dict)
    left_at: float | None = None  # when it said goodbye: its last reports may still be on their way
    _pool_of: dict[str, int] = field(default_factory=dict, repr=False)  # model -> pool index
    _capacity: list[int] = field(default_factory=list, repr=False)
    _busy: list[int] = field(default_factory=list, repr=False)
    _room: frozenset[str] | None = field(default=None, repr=False)  # models with a free slot, cached

    def __post_init__(self) -> None:
        self.update(self.status)

    def update(self, status: WorkerStatus) -> None:
        self.status = status
        pools = status.engine_pools()
        self._pool_of = {model: i for i, pool in enumerate(pools) for model in pool.models}
        self._capacity = [pool.slots for pool in pools]
        self._recount()

    def _recount(self) -> None:
        self._room = None  # the pools, or what is in them, changed
        self._busy = [0] * len(self._capacity)
        for model in (*self.running.values(), *self.cancelling.values()):
            self._count(model, 1)

    def _count(self, model: str, delta: int) -> None:
        pool = self._pool_of.get(model)
        if pool is not None:
            self._busy[pool] += delta
            self._room = None

    @property
    def free_slots(self) -> int:
        return self.status.slots - len(self.running) - len(self.cancelling)

    def can_take(self) -> bool:
        return not self.gone and not self.status.draining and self.free_slots > 0

    def models_with_room(self) -> frozenset[str]:
        if self._room is None:
            self._room = frozenset(model for model, pool in self._pool_of.items()
                                   if self._busy[pool] < self._capacity[pool])
        return self._room

    def take(self, job_id: uuid.UUID, model: str, *, cancelled: bool = False) -> None:
        """Count a job's slot: from its dispatch, or, once cancelled, until the worker lets go of it."""
        held = self.cancelling if cancelled else self.running
        if job_id not in held:
            held[job_id] = model
            self._count(model, 1)

    def release(self, job_id: uuid.UUID, *, cancelled: bool = False) -> None:
        if not cancelled:
            self.missing.pop(job_id, None)
        model = (self.cancelling if cancelled else self.running).pop(job_id, None)
        if model is not None:
            self._count(model, -1)

    def keep_cancelling(self, still_running: set[uuid.UUID]) -> None:
        self.cancelling = {j: m for j, m in self.cancelling.items() if j in still_running}
        self._recount()

    def clear(self) -> None:
        self.running.clear()
        self.cancelling.clear()
        self.missing.clear()
        self._recount()


@dataclass
class UserView:
    id: uuid.UUID
    plan: str
    version: int
    keys: dict[uuid.UUID, bool] = field(default_factory=dict)  # every key issued -> still valid


@dataclass
class UploadView:
    user_id: uuid.UUID
    object_name: str
    version: int
    stored: bool  # not deleted or expired


@dataclass
class FrontendView:
    version: int = 0
    keys: dict[uuid.UUID, bool] = field(default_factory=dict)  # every key issued -> still valid


@dataclass
class Ledger:
    """A user's tokens for one quota day: charged for completed jobs, and held for running ones."""

    used: float = 0.0
    reserved: float = 0.0


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


@dataclass(frozen=True)
class Limits:
    """The scheduler's tunables (docs/scheduling.md)."""

    max_attempts: int = 3
    worker_timeout_s: float = 10.0
    # How long an attempt may be missing from its worker's heartbeats before it is requeued (at
    # least three of that worker's heartbeat intervals).
    reconcile_grace_s: float = 10.0
    queue_timeout_s: float = 1800.0
    quota_timezone: str = "UTC"
    policy: PolicyConfig = field(default_factory=PolicyConfig)


class SchedulerState:
    def __init__(self, limits: Limits | None = None, *, wall_clock: Callable[[], float] = time.time,
                 policy: QueuePolicy | None = None) -> None:
        self.limits = limits or Limits()
        self.clock = wall_clock
        self.quota_zone = ZoneInfo(self.limits.quota_timezone)
        self.jobs: dict[uuid.UUID, Job] = {}
        self.plans: dict[str, PlanDefined] = {}
        self.plan_versions: dict[str, int] = {}
        self.users: dict[uuid.UUID, UserView] = {}
        self.frontends: dict[uuid.UUID, FrontendView] = {}  # by frontend stream id
        self.workers: dict[str, WorkerView] = {}
        self.fleet_known = False  # the first snapshot of the workers bucket has been read
        # False while the scheduler is cut off from NATS: no heartbeat can reach it then, so no
        # worker is judged by its silence (see `connection_lost` and `connection_back`).
        self.connected = True
        self.commands_seq = 0  # the command stream's sequence read up to (every command before it handled)
        self.policy: QueuePolicy = policy or TesseraPolicy(self.limits.policy)
        self._depth: dict[tuple[str, int], int] = {}  # (capability, priority) -> jobs waiting
        self.user_queued: Counter[uuid.UUID] = Counter()
        self.user_running: Counter[uuid.UUID] = Counter()
        self.ledger: dict[tuple[uuid.UUID, date], Ledger] = {}
        self.upload_ledger: dict[tuple[uuid.UUID, date], list[int]] = {}  # (user, day) -> [uploads, bytes]
        # Uploads a command of the batch refers to, loaded for it and forgotten after it.
        self.uploads: dict[uuid.UUID, UploadView] = {}
        self.execution_s: dict[str, float] = {}  # model -> moving average of measured execution time
        self._requests: dict[uuid.UUID, deque[float]] = {}  # user -> submit times in the last minute
        self._admitted: dict[uuid.UUID, int] = {}  # unfinished job -> its place in the queue's order
        self._order = 0
        self._last_timeout_check = 0.0
        self._orphans: dict[uuid.UUID, float] = {}  # running job on no known worker -> since when
        self._last_orphan_check = 0.0
        self.effects = Effects()

    # --- loading -----------------------------------------------------------------------------

    def load(self, records: list[RecordedEvent], head_seq: int,
             used: dict[tuple[uuid.UUID, date], float] | None = None,
             execution_s: dict[str, float] | None = None,
             recent_requests: list[tuple[uuid.UUID, float]] | None = None,
             uploads: dict[tuple[uuid.UUID, date], tuple[int, int]] | None = None) -> None:
        """Rebuild from the events of plans, frontends, the users of active jobs and active jobs
        (in log order), the tokens charged on recent quota days, measured execution times and the
        submits of the last minute (each user's rate window)."""
        self._order = head_seq
        for rec in records:
            self.apply(rec)
            if isinstance(rec.data, JobQueued):
                self._admitted[rec.stream_id] = rec.seq
        for (user_id, day), tokens in (used or {}).items():
            self._ledger(user_id, day).used += tokens
        self.execution_s.update(execution_s or {})
        for user_id, at in recent_requests or []:  # the rate windows, as the log remembers them
            self._requests.setdefault(user_id, deque()).append(at)
        for key, (count, size) in (uploads or {}).items():
            self.upload_ledger[key] = [count, size]
        self._admitted = {job_id: order for job_id, order in self._admitted.items()
                          if job_id in self.jobs and not self.jobs[job_id].status.terminal}
        for job in self.jobs.values():
            if job.status is JobStatus.QUEUED:
                self._enqueue(job)
            elif job.status is JobStatus.RUNNING:
                self.user_running[job.user_id] += 1
                worker = self.workers.get(job.worker_id or "")
                if worker:
                    worker.take(job.id, job.model)
            if job.quota_day is not None and not job.status.terminal:
                self._ledger(job.user_id, job.quota_day).reserved += job.reserved_tokens

    def apply(self, rec: RecordedEvent) -> None:
        """Fold one stored event into the state (loading, and events this process emits)."""
        event = rec.data
        if rec.stream_type == "job":
            self.jobs[rec.stream_id] = evolve(self.jobs.get(rec.stream_id), rec)
        elif isinstance(event, PlanDefined):
            self.plans[event.tier] = event
            self.plan_versions[event.tier] = rec.version
        elif isinstance(event, UserRegistered):
            self.users[rec.stream_id] = UserView(id=rec.stream_id, plan=event.plan, version=rec.version)
        elif isinstance(event, ApiKeyIssued | ApiKeyRevoked | UserPlanChanged):
            user = self.users.get(rec.stream_id)
            if user:
                user.version = rec.version
                if isinstance(event, UserPlanChanged):
                    user.plan = event.plan
                else:
                    user.keys[event.key_id] = isinstance(event, ApiKeyIssued)
        elif isinstance(event, UploadStored):
            self.uploads[rec.stream_id] = UploadView(user_id=event.user_id, object_name=event.object_name,
                                                     version=rec.version, stored=True)
        elif isinstance(event, UploadDeleted | UploadExpired):
            upload = self.uploads.get(rec.stream_id)
            if upload is not None:
                upload.version, upload.stored = rec.version, False
        elif isinstance(event, FrontendKeyIssued | FrontendKeyRevoked):
            frontend = self.frontends.setdefault(rec.stream_id, FrontendView())
            frontend.version = rec.version
            frontend.keys[event.key_id] = isinstance(event, FrontendKeyIssued)

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
        """Record a job event and keep every count that depends on the job's status in step."""
        current = self.jobs.get(job_id)
        before = current.status if current else None
        worker_id = current.worker_id if current else None  # before the event: a requeue clears it
        self.emit("job", job_id, (current.version if current else 0) + 1, event, cause)
        job = self.jobs[job_id]
        after = job.status
        if before is JobStatus.QUEUED and after is not JobStatus.QUEUED:
            self._dequeue(job)
        if before is JobStatus.RUNNING and after is not JobStatus.RUNNING:
            self.user_running[job.user_id] -= 1
            self._release_slot(job, worker_id)
        if after is JobStatus.RUNNING and before is not JobStatus.RUNNING:
            self.user_running[job.user_id] += 1
        if isinstance(event, JobQueued) and job.quota_day is not None:
            self._ledger(job.user_id, job.quota_day).reserved += job.reserved_tokens
        if after.terminal:
            self._admitted.pop(job_id, None)
            if job.quota_day is not None:
                ledger = self._ledger(job.user_id, job.quota_day)
                ledger.reserved -= job.reserved_tokens
                if after is JobStatus.COMPLETED:
                    ledger.used += job.cost_tokens
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

    # --- quotas and limits -------------------------------------------------------------------

    def quota_day(self, at: float | None = None) -> date:
        return datetime.fromtimestamp(self.clock() if at is None else at, self.quota_zone).date()

    def quota_resets_at(self, day: date) -> datetime:
        """When `day`'s quota ends (midnight after it, in the quota time zone), in UTC."""
        return datetime.combine(day + timedelta(days=1), datetime.min.time(), self.quota_zone).astimezone(UTC)

    def _ledger(self, user_id: uuid.UUID, day: date) -> Ledger:
        ledger = self.ledger.get((user_id, day))
        if ledger is None:
            ledger = self.ledger[(user_id, day)] = Ledger()
            if len(self.ledger) > 4 * max(len(self.users), 1024):
                self._forget_old_days()
        return ledger

    def _forget_old_days(self) -> None:
        cutoff = self.quota_day() - timedelta(days=2)
        for key in [k for k, v in self.ledger.items() if k[1] < cutoff and abs(v.reserved) < 1e-9]:
            del self.ledger[key]
        now = self.clock()
        for user_id in [u for u, w in self._requests.items() if not w or now - w[-1] >= 60.0]:
            del self._requests[user_id]

    def plan_of(self, user_id: uuid.UUID) -> PlanDefined:
        user = self.users.get(user_id)
        return self.plans.get(user.plan if user else "free") or self.plans["free"]

    def concurrency_limit(self, user_id: uuid.UUID) -> int:
        return self.plan_of(user_id).max_concurrent_jobs

    def _rate(self, user_id: uuid.UUID, plan: PlanDefined, now: float) -> RateLimit:
        """Requests in the sliding minute before `now` (not counting this one)."""
        window = self._requests.setdefault(user_id, deque())
        while window and now - window[0] >= 60.0:
            window.popleft()
        reset = 60.0 - (now - window[0]) if window else 60.0
        return RateLimit(limit=plan.requests_per_minute, remaining=max(0, plan.requests_per_minute - len(window)),
                         reset_seconds=round(reset, 3))

    # --- queue -------------------------------------------------------------------------------

    def _enqueue(self, job: Job) -> None:
        """Put a job in the queue: a new one behind those admitted before it, a requeued one back
        in its place of admission (its wait for a worker that was lost was not its fault)."""
        order = self._admitted.get(job.id)
        if order is None:
            order = self._admitted[job.id] = self._next_order()
        enqueued_at = job.queued_at.timestamp() if job.queued_at else self.clock()
        model = catalog.CATALOG.get(job.model)
        size = max(model.size(job.params)) if model else 0
        self.policy.push(Waiting(job_id=job.id, user_id=job.user_id, model=job.model, priority=job.priority,
                                 order=order, enqueued_at=enqueued_at, size=size))
        key = (job.capability, job.priority)
        self._depth[key] = self._depth.get(key, 0) + 1
        self.user_queued[job.user_id] += 1

    def _dequeue(self, job: Job) -> None:
        """Count a job out of the queue (picked, cancelled or timed out)."""
        self.policy.remove(job.id)
        self._depth[(job.capability, job.priority)] -= 1
        self.user_queued[job.user_id] -= 1

    def queue_position(self, job: Job) -> int:
        """Jobs that wait for the same capability at this tier or above, other than this one."""
        return max(0, sum(depth for (cap, prio), depth in self._depth.items()
                          if cap == job.capability and prio >= job.priority) - 1)

    def _release_slot(self, job: Job, worker_id: str | None) -> None:
        if worker_id and worker_id in self.workers:
            self.workers[worker_id].release(job.id)

    # --- command handlers --------------------------------------------------------------------

    def reply(self, reply_to: str | None, decision: Decision, job_id: uuid.UUID | None = None) -> None:
        if reply_to:
            self.effects.replies.append((reply_to, job_id, decision))

    def _refuse(self, reply_to: str | None, status: int, code: str, detail: str, **extra: Any) -> None:
        self.reply(reply_to, Decision(ok=False, status=status, code=code, detail=detail, **extra))

    def typical_seconds(self, model_name: str) -> float:
        measured = self.execution_s.get(model_name)
        if measured is not None:
            return measured
        model = catalog.CATALOG.get(model_name)
        return model.typical_seconds if model else 5.0

    def capable_slots(self, model_name: str) -> int:
        return sum(w.status.slots_for(model_name) for w in self.workers.values() if not w.gone)

    def summary(self, job: Job) -> JobSummary:
        position = self.queue_position(job) if job.status is JobStatus.QUEUED else None
        estimate = None
        if not job.status.terminal:
            waves = ((position or 0) // max(self.capable_slots(job.model), 1)) + 1
            estimate = round(waves * self.typical_seconds(job.model), 3)
        return JobSummary(job_id=job.id, status=job.status.value, cost_tokens=job.cost_tokens,
                          queue_position=position, estimated_time_seconds=estimate)

    def submit(self, cmd: SubmitJob, reply_to: str | None, cause: str) -> None:
        existing = self.jobs.get(cmd.job_id)
        if existing is not None:
            if existing.user_id != cmd.user_id:
                self._refuse(reply_to, 409, "JOB_ID_CONFLICT", "this job id is taken")
            else:  # the same submit again (retry, redelivery, idempotency key): one effect
                self.reply(reply_to, Decision(ok=True, status=202), existing.id)
            return
        now = self.clock()
        if datetime.fromtimestamp(now, UTC) > cmd.deadline:
            self._refuse(reply_to, 503, "SUBMIT_EXPIRED", "the submit arrived after its deadline; nothing was created")
            return
        if cmd.capability not in catalog.CAPABILITIES:
            self._refuse(reply_to, 422, "UNKNOWN_CAPABILITY", f"unknown capability {cmd.capability!r}; "
                         f"known: {', '.join(catalog.CAPABILITIES)}")
            return
        model = catalog.resolve(cmd.capability, cmd.model)
        if model is None:
            detail = (f"model {cmd.model!r} does not serve capability {cmd.capability!r}" if cmd.model
                      else f"no model serves capability {cmd.capability!r}")
            self._refuse(reply_to, 422, "UNKNOWN_MODEL", detail)
            return
        try:
            model.check(cmd.params)
        except catalog.ParamError as exc:
            self._refuse(reply_to, 422, exc.code, exc.message)
            return
        user = self._user_for(cmd, cause)
        if user is None:
            self._refuse(reply_to, 401, "UNKNOWN_USER", "user is not registered")
            return
        plan = self.plans[user.plan]
        rate = self._rate(user.id, plan, now)
        if rate.remaining <= 0:
            self._refuse(reply_to, 429, "RATE_LIMITED", f"more than {plan.requests_per_minute} requests in a minute "
                         f"on the {plan.name} plan; retry in {math.ceil(rate.reset_seconds)}s",
                         rate=rate, retry_after=math.ceil(rate.reset_seconds))
            return
        self._requests[user.id].append(now)
        rate = msgspec.structs.replace(rate, remaining=rate.remaining - 1)
        if model.gated and "*" not in plan.allowed_models and model.name not in plan.allowed_models:
            allowed = ", ".join(plan.allowed_models) or "none"
            self._refuse(reply_to, 403, "MODEL_NOT_ALLOWED", f"the {plan.name} plan does not include {model.name} "
                         f"(it includes {allowed}); upgrade to use it", rate=rate)
            return
        width, height = model.size(cmd.params)
        if max(width, height) > plan.max_resolution:
            self._refuse(reply_to, 403, "RESOLUTION_TOO_HIGH", f"{width}x{height} is above the {plan.name} plan's "
                         f"{plan.max_resolution} px per side", rate=rate)
            return
        if self.user_queued[user.id] >= plan.max_queued_jobs:
            self._refuse(reply_to, 429, "TOO_MANY_QUEUED_JOBS", f"{self.user_queued[user.id]} jobs already wait "
                         f"(the {plan.name} plan allows {plan.max_queued_jobs} waiting and "
                         f"{plan.max_concurrent_jobs} running); retry when one has started",
                         rate=rate, retry_after=max(1, math.ceil(self.typical_seconds(model.name))))
            return
        if self.fleet_known and not self._anyone_can_run(model.name, max(width, height)):
            size = f" at {width}x{height}" if width else ""
            self._refuse(reply_to, 503, "NO_CAPABLE_WORKER", f"no worker online can run {model.name}{size}",
                         rate=rate)
            return
        cost = model.cost(cmd.params)
        day = self.quota_day(now)
        ledger = self._ledger(user.id, day)
        limit = plan.daily_token_limit
        if limit is not None and ledger.used + ledger.reserved + cost > limit + 1e-9:
            resets = self.quota_resets_at(day)
            left = max(0.0, limit - ledger.used - ledger.reserved)
            self._refuse(reply_to, 429, "QUOTA_EXCEEDED", f"this job costs {cost:g} tokens and {left:g} of today's "
                         f"{limit} are left ({ledger.used:g} used, {ledger.reserved:g} held by unfinished jobs); "
                         f"the quota resets at {resets.isoformat()}",
                         rate=rate, retry_after=max(1, math.ceil(resets.timestamp() - now)))
            return
        self.emit_job(cmd.job_id, JobSubmitted(
            user_id=user.id, user_ref=cmd.user_ref, frontend=cmd.frontend, bot_id=cmd.bot_id,
            capability=cmd.capability, model=model.name, params=cmd.params, priority=plan.priority,
            cost_tokens=cost, reply_context=cmd.reply_context,
        ), cause)
        job = self.emit_job(cmd.job_id, JobQueued(priority=plan.priority, reserved_tokens=cost, quota_day=day,
                                                  reason=f"admitted on the {plan.name} plan"), cause)
        self._enqueue(job)
        self.effects.activated.append(job.id)
        self.reply(reply_to, Decision(ok=True, status=202, user_id=user.id, rate=rate), job.id)

    def _anyone_can_run(self, model_name: str, size: int) -> bool:
        return any(not w.gone and model_name in w.status.models
                   and (w.status.max_resolution is None or size <= w.status.max_resolution)
                   for w in self.workers.values())

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
            self._refuse(reply_to, 404, "JOB_NOT_FOUND", "no such job")
            return
        if job.status.terminal:
            self.reply(reply_to, Decision(ok=False, status=409, code="JOB_TERMINAL",
                                          detail=f"job is already {job.status.value}"), job.id)
            return
        was_running = job.status is JobStatus.RUNNING
        worker_id, attempt = job.worker_id, job.attempt
        job = self.emit_job(job.id, JobCancelled(reason=cmd.reason, requested_by="user",
                                                 released_tokens=job.reserved_tokens, quota_day=job.quota_day), cause)
        if was_running and worker_id:
            worker = self.workers.get(worker_id)
            if worker:
                worker.take(job.id, job.model, cancelled=True)
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
        model = catalog.CATALOG.get(job.model)
        charge = job.cost_tokens
        if model is not None and job.quota_day is not None:
            charge = min(job.reserved_tokens, model.actual_cost(job.params, cmd.usage))
        self.emit_job(job.id, JobCompleted(
            worker_id=cmd.worker_id, attempt=cmd.attempt, artifacts=cmd.artifacts,
            execution_time_seconds=cmd.execution_time_seconds, cost_tokens=charge,
            reserved_tokens=job.reserved_tokens, quota_day=job.quota_day, usage=cmd.usage,
            started_at=cmd.started_at if job.started_at is None else None,
        ), cause)
        previous = self.execution_s.get(job.model)
        seconds = cmd.execution_time_seconds
        self.execution_s[job.model] = seconds if previous is None else previous + EWMA_WEIGHT * (seconds - previous)

    def failed(self, cmd: ReportFailed, cause: str) -> None:
        self._let_go(cmd.worker_id, cmd.job_id)
        job = self._current_attempt(cmd.job_id, cmd.worker_id, cmd.attempt)
        if job is None:
            return
        if cmd.code in RETRIED_CODES:  # not the job's fault: another attempt, here or on another worker
            self._retry(job, cmd.code, f"{cmd.code}: {cmd.message}", cause)
            return
        self._fail(job, cmd.code, cmd.message, cause, worker_id=cmd.worker_id, attempt=cmd.attempt,
                   started_at=cmd.started_at if job.started_at is None else None)

    def _retry(self, job: Job, code: str, reason: str, cause: str) -> None:
        """End a running attempt that was lost through no fault of the job's: requeue the job for a
        new attempt (its place in the queue kept; the old attempt fenced, so a late result of it is
        refused), or fail it with `code` once it has had its attempts."""
        worker_id, attempt = job.worker_id, job.attempt
        if attempt < self.limits.max_attempts:
            job = self.emit_job(job.id, JobRequeued(worker_id=worker_id or "", attempt=attempt, reason=reason), cause)
            self._enqueue(job)
        else:
            self._fail(job, code, f"{reason} (attempt {attempt} of {self.limits.max_attempts})", cause,
                       worker_id=worker_id, attempt=attempt)

    def _fail(self, job: Job, code: str, message: str, cause: str, *, worker_id: str | None = None,
              attempt: int | None = None, started_at: datetime | None = None) -> Job:
        return self.emit_job(job.id, JobFailed(code=code, message=message, worker_id=worker_id, attempt=attempt,
                                               released_tokens=job.reserved_tokens, quota_day=job.quota_day,
                                               started_at=started_at), cause)

    def _let_go(self, worker_id: str, job_id: uuid.UUID) -> None:
        worker = self.workers.get(worker_id)
        if worker:
            worker.release(job_id, cancelled=True)

    def create_user(self, cmd: CreateUser, reply_to: str | None, cause: str) -> None:
        if cmd.plan not in self.plans:
            self._refuse(reply_to, 422, "UNKNOWN_PLAN", f"no plan {cmd.plan!r}")
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

    def change_user_plan(self, cmd: ChangeUserPlan, reply_to: str | None, cause: str) -> None:
        if cmd.plan not in self.plans:
            self._refuse(reply_to, 422, "UNKNOWN_PLAN", f"no plan {cmd.plan!r}")
            return
        stream_id = user_stream_id(cmd.platform, cmd.platform_user_id)
        user = self.users.get(stream_id)
        if user is None:
            self._refuse(reply_to, 404, "USER_NOT_FOUND", f"no user {cmd.platform}:{cmd.platform_user_id}")
            return
        if user.plan != cmd.plan:
            self.emit("user", stream_id, user.version + 1,
                      UserPlanChanged(plan=cmd.plan, previous_plan=user.plan, changed_by=cmd.changed_by), cause)
        self.reply(reply_to, Decision(ok=True, status=200, user_id=stream_id))

    def define_plan(self, cmd: DefinePlan, reply_to: str | None, cause: str) -> None:
        """Create a plan, or change some of an existing plan's terms (the rest stay)."""
        current = self.plans.get(cmd.tier)
        changes = {k: v for k, v in msgspec.structs.asdict(cmd).items()
                   if k not in ("command_id", "tier", "unlimited_tokens") and v is not None}
        if cmd.unlimited_tokens:
            changes["daily_token_limit"] = None
        try:
            if current is None:
                plan = PlanDefined(tier=cmd.tier, **{"name": cmd.tier.title(), "allowed_models": [], **changes})
            else:
                plan = msgspec.structs.replace(current, **changes)
            plan = msgspec.convert(msgspec.to_builtins(plan), PlanDefined)  # re-validate every field
            _check_plan(plan)
        except (TypeError, msgspec.ValidationError, ValueError) as exc:
            self._refuse(reply_to, 422, "INVALID_PLAN", f"plan {cmd.tier!r}: {exc}")
            return
        if plan != current:
            self.emit("plan", plan_stream_id(cmd.tier), self.plan_versions.get(cmd.tier, 0) + 1, plan, cause)
        self.reply(reply_to, Decision(ok=True, status=200))

    def store_upload(self, cmd: StoreUpload, reply_to: str | None, cause: str) -> None:
        """Count an upload against the user's plan: its size, and its uploads and bytes today."""
        if cmd.upload_id in self.uploads:  # the same command again: one upload
            self.reply(reply_to, Decision(ok=True, status=201))
            return
        plan = self.plan_of(cmd.user_id)
        day = self.quota_day()
        count, size = self.upload_ledger.get((cmd.user_id, day), (0, 0))
        retry = max(1, math.ceil(self.quota_resets_at(day).timestamp() - self.clock()))
        if plan.max_upload_bytes is not None and cmd.size_bytes > plan.max_upload_bytes:
            self._refuse(reply_to, 413, "UPLOAD_TOO_LARGE", f"the {plan.name} plan takes uploads of up to "
                         f"{plan.max_upload_bytes} bytes; this one has {cmd.size_bytes}")
            return
        if plan.uploads_per_day is not None and count >= plan.uploads_per_day:
            self._refuse(reply_to, 429, "UPLOAD_QUOTA_EXCEEDED", f"the {plan.name} plan takes {plan.uploads_per_day} "
                         f"uploads a day; the quota resets at {self.quota_resets_at(day).isoformat()}",
                         retry_after=retry)
            return
        if plan.upload_bytes_per_day is not None and size + cmd.size_bytes > plan.upload_bytes_per_day:
            self._refuse(reply_to, 429, "UPLOAD_QUOTA_EXCEEDED", f"the {plan.name} plan takes "
                         f"{plan.upload_bytes_per_day} bytes of uploads a day and {size} are used; the quota resets "
                         f"at {self.quota_resets_at(day).isoformat()}", retry_after=retry)
            return
        self.emit("upload", cmd.upload_id, 1, UploadStored(
            user_id=cmd.user_id, object_name=cmd.object_name, content_type=cmd.content_type,
            size_bytes=cmd.size_bytes, duration_seconds=cmd.duration_seconds, bits_per_sample=cmd.bits_per_sample,
            quota_day=day, expires_at=cmd.expires_at), cause)
        self.upload_ledger[(cmd.user_id, day)] = [count + 1, size + cmd.size_bytes]
        self.reply(reply_to, Decision(ok=True, status=201))

    def delete_upload(self, cmd: DeleteUpload, reply_to: str | None, cause: str) -> None:
        upload = self.uploads.get(cmd.upload_id)
        if upload is None or upload.user_id != cmd.user_id:  # another user's is indistinguishable from none
            self._refuse(reply_to, 404, "UPLOAD_NOT_FOUND", f"no upload {cmd.upload_id}")
            return
        if upload.stored:
            self.emit("upload", cmd.upload_id, upload.version + 1,
                      UploadDeleted(user_id=cmd.user_id, object_name=upload.object_name), cause)
            self.effects.discard_objects.append(upload.object_name)
        self.reply(reply_to, Decision(ok=True, status=200))

    def expire_uploads(self, expired: list[tuple[uuid.UUID, str, int]]) -> None:
        """Record the expiry of uploads past their time (id, object name, stream version)."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        for upload_id, object_name, version in expired:
            self.emit("upload", upload_id, version + 1, UploadExpired(object_name=object_name, expired_at=now),
                      "scheduler:upload-expiry")
            self.effects.discard_objects.append(object_name)

    def expire_artifacts(self, expired: list[tuple[uuid.UUID, uuid.UUID, str | None]]) -> None:
        """Record the expiry of artifacts past their time (id, job id, object name); their bytes are
        removed from the object store once the events are committed."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        for artifact_id, job_id, object_name in expired:
            self.emit("artifact", artifact_id, 1, ArtifactExpired(job_id=job_id, object_name=object_name,
                                                                  expired_at=now), "scheduler:artifact-expiry")
            if object_name:
                self.effects.discard_objects.append(object_name)

    def create_frontend_key(self, cmd: CreateFrontendKey, reply_to: str | None, cause: str) -> None:
        stream_id = frontend_stream_id(cmd.frontend, cmd.bot_id)
        frontend = self.frontends.get(stream_id) or FrontendView()
        if cmd.key_id not in frontend.keys:  # else the same command again: one key
            self.emit("frontend", stream_id, frontend.version + 1, FrontendKeyIssued(
                frontend=cmd.frontend, bot_id=cmd.bot_id, key_id=cmd.key_id, key_hash=cmd.key_hash,
                prefix=cmd.key_prefix), cause)
        self.reply(reply_to, Decision(ok=True, status=201))

    def issue_api_key(self, cmd: IssueApiKey, reply_to: str | None, cause: str) -> None:
        """Another key for an existing user; with `replaces`, that key is revoked in the same commit."""
        user = self.users.get(cmd.user_id)
        if user is None:
            self._refuse(reply_to, 404, "USER_NOT_FOUND", "no such user")
            return
        if cmd.key_id in user.keys:  # the same command again: one key
            self.reply(reply_to, Decision(ok=True, status=201, user_id=user.id))
            return
        if cmd.replaces is not None and not user.keys.get(cmd.replaces):
            self._refuse(reply_to, 404, "KEY_NOT_FOUND", f"no valid key {cmd.replaces} to replace")
            return
        if cmd.replaces is None and sum(user.keys.values()) >= MAX_KEYS_PER_USER:
            self._refuse(reply_to, 409, "TOO_MANY_KEYS", f"a user holds at most {MAX_KEYS_PER_USER} valid keys; "
                         "revoke one first")
            return
        self.emit("user", user.id, user.version + 1, ApiKeyIssued(key_id=cmd.key_id, key_hash=cmd.key_hash,
                                                                  prefix=cmd.key_prefix, label=cmd.label), cause)
        if cmd.replaces is not None:
            self.emit("user", user.id, user.version + 1, ApiKeyRevoked(key_id=cmd.replaces, revoked_by=cmd.by,
                                                                       reason=f"rotated to {cmd.key_id}"), cause)
        self.reply(reply_to, Decision(ok=True, status=201, user_id=user.id))

    def revoke_key(self, cmd: RevokeKey, reply_to: str | None, cause: str) -> None:
        """Revoke a user's key or a frontend's; revoking a revoked key again changes nothing."""
        if cmd.user_id is not None:
            user = self.users.get(cmd.user_id)
            known = user.keys if user is not None else {}
            stream_type, stream_id, version = "user", cmd.user_id, user.version if user is not None else 0
            event: AnyEvent = ApiKeyRevoked(key_id=cmd.key_id, revoked_by=cmd.by, reason=cmd.reason)
        elif cmd.frontend is not None:
            stream_id = frontend_stream_id(cmd.frontend, cmd.bot_id)
            frontend = self.frontends.get(stream_id) or FrontendView()
            known, stream_type, version = frontend.keys, "frontend", frontend.version
            event = FrontendKeyRevoked(key_id=cmd.key_id, revoked_by=cmd.by, reason=cmd.reason)
        else:
            known = {}
        if cmd.key_id not in known:  # someone else's key is indistinguishable from none
            self._refuse(reply_to, 404, "KEY_NOT_FOUND", f"no key {cmd.key_id}")
            return
        if known[cmd.key_id]:
            self.emit(stream_type, stream_id, version + 1, event, cause)
        self.reply(reply_to, Decision(ok=True, status=200))

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
            for job in self.jobs.values():
                if job.status is JobStatus.RUNNING and job.worker_id == status.worker_id:
                    view.take(job.id, job.model)
        view.update(status)
        view.loaded = set(status.loaded_models)
        view.last_seen = now
        view.keep_cancelling(set(status.running))
        if status.held is not None:
            self._reconcile(view, status.held, status.reported_seq, now)

    def _reconcile(self, view: WorkerView, held: dict[uuid.UUID, int], reported_seq: int, now: float) -> None:
        """Note the attempts this worker should run that its heartbeat does not hold."""
        missing = {}
        for job_id in view.running:
            job = self.jobs.get(job_id)
            if job is None or held.get(job_id) == job.attempt:
                continue
            missing[job_id] = view.missing.get(job_id) or (now, reported_seq)
        view.missing = missing

    def _requeue_missing(self, view: WorkerView, now: float) -> None:
        """Requeue the attempts a worker has not held for a grace period, once every report it had
        stored when first missing them has been read: their dispatch was lost (a purge, a NATS
        restart, a crash between fetch and start) and no result can come."""
        grace = max(self.limits.reconcile_grace_s, 3 * view.status.heartbeat_interval_s)
        for job_id, (since, reported_seq) in list(view.missing.items()):
            if now - since < grace or self.commands_seq < reported_seq:
                continue
            del view.missing[job_id]
            job = self.jobs.get(job_id)
            if job is None or job.status is not JobStatus.RUNNING or job.worker_id != view.status.worker_id:
                continue
            log.warning("worker %s does not hold job %s attempt %d (missing for %.1fs): requeued",
                        view.status.worker_id, job_id, job.attempt, now - since)
            self._retry(job, "ATTEMPT_LOST", f"worker {view.status.worker_id} never ran attempt {job.attempt} "
                        f"(not held for {now - since:.0f}s)", "scheduler:reconcile")

    def connection_lost(self) -> None:
        """The scheduler's NATS connection dropped: heartbeats cannot reach it until it is back."""
        self.connected = False

    def connection_back(self, now: float | None = None) -> None:
        """Connected again: every worker gets a full timeout from now (its silence while the
        scheduler was away says nothing), and missing attempts are judged afresh."""
        now = time.monotonic() if now is None else now
        self.connected = True
        for view in self.workers.values():
            view.last_seen = max(view.last_seen, now)
            if view.left_at is not None:
                view.left_at = max(view.left_at, now)
            view.missing.clear()

    def worker_gone(self, worker_id: str, now: float | None = None) -> None:
        """The worker said goodbye (or its entry went). It takes nothing more. A draining worker says
        goodbye after reporting its jobs, but the reports travel on the command stream and may
        arrive after the goodbye, so what it still runs is declared lost only after a grace period."""
        view = self.workers.get(worker_id)
        if view is not None and not view.gone:
            view.gone = True
            view.left_at = time.monotonic() if now is None else now

    def _lose_worker(self, view: WorkerView, reason: str) -> None:
        view.gone = True
        for job_id in list(view.running):
            job = self.jobs.get(job_id)
            if job is None or job.status is not JobStatus.RUNNING or job.worker_id != view.status.worker_id:
                continue
            self._retry(job, "WORKER_LOST", reason, "scheduler:worker-lost")
        view.clear()
        self.effects.purge_workers.append(view.status.worker_id)

    def tick(self, now: float | None = None) -> None:
        """Declare workers lost whose heartbeats stopped; fail jobs that waited too long."""
        now = time.monotonic() if now is None else now
        for worker_id, view in list(self.workers.items()):
            if not self.connected:
                break  # a worker's silence is judged only over time the scheduler could hear it
            if view.gone:
                if view.running and view.left_at is not None and now - view.left_at > self.limits.worker_timeout_s:
                    self._lose_worker(view, "the worker left without reporting these jobs")
                if not view.running:
                    del self.workers[worker_id]
                continue
            if now - view.last_seen > self.limits.worker_timeout_s:
                log.warning("worker %s missed its heartbeats for %.1fs: declared lost", worker_id, now - view.last_seen)
                self._lose_worker(view, f"no heartbeat for {now - view.last_seen:.0f}s")
                del self.workers[worker_id]
            elif view.missing:
                self._requeue_missing(view, now)
        if self.connected and self.fleet_known and now - self._last_orphan_check >= 1.0:
            self._last_orphan_check = now
            self._requeue_orphans(now)
        wall = self.clock()
        if wall - self._last_timeout_check >= 1.0:
            self._last_timeout_check = wall
            timeout = self.limits.queue_timeout_s
            for waiting in list(self.policy):
                if wall - waiting.enqueued_at > timeout:
                    job = self.jobs[waiting.job_id]
                    self._fail(job, "QUEUE_TIMEOUT", f"no worker took the job within {timeout:.0f}s; "
                               f"its {job.reserved_tokens:g} reserved tokens are released", "scheduler:queue-timeout")

    def _requeue_orphans(self, now: float) -> None:
        """Requeue jobs running on a worker the scheduler does not know, for longer than a worker
        timeout: a worker that said goodbye, or vanished from the bucket, before this scheduler
        loaded its jobs. No heartbeat of it will ever come to judge it by."""
        orphans = {}
        for job in [j for j in self.jobs.values() if j.status is JobStatus.RUNNING]:
            if job.worker_id in self.workers:
                continue
            since = orphans[job.id] = self._orphans.get(job.id, now)
            if now - since > self.limits.worker_timeout_s:
                del orphans[job.id]
                self._retry(job, "WORKER_LOST", f"worker {job.worker_id} is not online", "scheduler:worker-lost")
        self._orphans = orphans

    def schedule(self) -> None:
        """Hand waiting jobs to workers with free slots, as the queue policy picks them."""
        if not len(self.policy):
            return
        now = self.clock()
        for view in self.workers.values():
            while view.can_take():
                models = view.models_with_room()
                if not models:
                    break
                slot = Slot(worker_id=view.status.worker_id, models=models,
                            loaded=frozenset(view.loaded), max_resolution=view.status.max_resolution)
                pick = self.policy.pick(slot, now, self.user_running, self.concurrency_limit)
                if pick is None:
                    break
                job = self.jobs[pick.job.job_id]
                job = self.emit_job(job.id, JobDispatched(worker_id=view.status.worker_id, attempt=job.attempt + 1,
                                                          reason=pick.reason), "scheduler:dispatch")
                view.take(job.id, job.model)
                view.loaded.add(job.model)  # until its next heartbeat says otherwise
                self.effects.dispatches.append((view.status.worker_id, self.dispatch_message(job)))

    def dispatch_message(self, job: Job) -> Dispatch:
        """The dispatch of a running job's attempt, addressed to the worker instance it was given to
        when that instance is known (a restarted worker drops what was meant for its previous life)."""
        model = catalog.CATALOG[job.model]
        view = self.workers.get(job.worker_id or "")
        return Dispatch(job_id=job.id, attempt=job.attempt, capability=job.capability, model=job.model,
                        params=job.params, timeout_seconds=model.timeout_seconds, dispatched_at=datetime.now(UTC),
                        instance_id=view.status.instance_id if view is not None and not view.gone else None)


EWMA_WEIGHT = 0.2  # weight of the newest measurement in a model's execution-time average

MAX_KEYS_PER_USER = 20

# Failures a worker reports that are not the job's fault: the engine's server could not be reached,
# or went away before any result, or NATS kept the result from being stored. The job gets another
# attempt (docs/engines.md).
RETRIED_CODES = frozenset({"ENGINE_UNAVAILABLE", "ENGINE_DISCONNECTED", "ARTIFACT_STORE_UNAVAILABLE"})


def _check_plan(plan: PlanDefined) -> None:
    if not 0 <= plan.priority <= 3:
        raise ValueError("priority must be 0 (free) to 3 (admin)")
    numbers = {"requests_per_minute": plan.requests_per_minute, "max_concurrent_jobs": plan.max_concurrent_jobs,
               "max_queued_jobs": plan.max_queued_jobs, "max_resolution": plan.max_resolution}
    for name, value in numbers.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1")
    for name in ("uploads_per_day", "upload_bytes_per_day", "max_upload_bytes"):
        if getattr(plan, name) is not None and getattr(plan, name) < 0:
            raise ValueError(f"{name} must not be negative")
    if plan.daily_token_limit is not None and plan.daily_token_limit < 0:
        raise ValueError("daily_token_limit must not be negative")
    unknown = [m for m in plan.allowed_models if m != "*" and m not in catalog.CATALOG]
    if unknown:
        raise ValueError(f"unknown models {', '.join(unknown)}")
