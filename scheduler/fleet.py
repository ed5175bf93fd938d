"""The worker fleet as the scheduler sees it: each worker's slots, heartbeats, and its loss.

Workers announce themselves in the workers bucket; a worker whose heartbeats stop, or that comes
back as a new instance, is lost, and the attempts it ran go back to the job aggregate (`retry`),
which requeues or fails them. Attempts a worker's heartbeats stop listing are reconciled here.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from events.job import Job, JobStatus
from scheduler.effects import Emitter
from streams.messages import WorkerStatus

log = logging.getLogger(__name__)

# What the fleet asks of the job aggregate for an attempt its worker lost: (job, code, reason, cause).
Retry = Callable[[Job, str, str, str], None]


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
            self._room = frozenset(
                model for model, pool in self._pool_of.items() if self._busy[pool] < self._capacity[pool]
            )
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


class Fleet:
    """The workers online, what each runs, and when one is lost."""

    def __init__(
        self,
        out: Emitter,
        jobs: Mapping[uuid.UUID, Job],
        retry: Retry,
        *,
        worker_timeout_s: float,
        reconcile_grace_s: float,
        worker_grace_s: float = 0.0,
    ) -> None:
        self.out = out
        self.jobs = jobs
        self.retry = retry
        self.worker_timeout_s = worker_timeout_s
        # How long an attempt may be missing from its worker's heartbeats before it is requeued (at
        # least three of that worker's heartbeat intervals).
        self.reconcile_grace_s = reconcile_grace_s
        self.workers: dict[str, WorkerView] = {}
        # Model -> worker -> (when that worker last offered it, the largest side it takes; None: any).
        # Admission still takes a model served within `worker_grace_s`: a worker restarting for a
        # deploy is back soon, and its jobs wait for it rather than being refused.
        self.worker_grace_s = worker_grace_s
        self.served: dict[str, dict[str, tuple[float, int | None]]] = {}
        self.now = 0.0  # the latest monotonic time a heartbeat or a tick brought
        self.known = False  # the first snapshot of the workers bucket has been read
        # False while the scheduler is cut off from NATS: no heartbeat can reach it then, so no
        # worker is judged by its silence (see `connection_lost` and `connection_back`).
        self.connected = True
        self.commands_seq = 0  # the command stream's sequence read up to (every command before it handled)

    # --- reading -------------------------------------------------------------------------------

    def capable_slots(self, model_name: str) -> int:
        return sum(w.status.slots_for(model_name) for w in self.workers.values() if not w.gone)

    def can_run(self, model: str, side: int, now: float | None = None) -> bool:
        if any(
            not w.gone
            and model in w.status.models
            and (w.status.max_resolution is None or side <= w.status.max_resolution)
            for w in self.workers.values()
        ):
            return True
        now = self.now if now is None else now
        return any(
            now - at <= self.worker_grace_s and (largest is None or side <= largest)
            for at, largest in self.served.get(model, {}).values()
        )

    def _note_served(self, status: WorkerStatus, now: float) -> None:
        """A live worker offers these models now; one it stopped offering (its engine went down) is
        no longer served by it: the grace is for workers that went away, not for engines that failed."""
        for model, workers in self.served.items():
            if model not in status.models:
                workers.pop(status.worker_id, None)
        for model in status.models:
            self.served.setdefault(model, {})[status.worker_id] = (now, status.max_resolution)

    # --- slots ---------------------------------------------------------------------------------

    def release_slot(self, job: Job, worker_id: str | None) -> None:
        if worker_id and worker_id in self.workers:
            self.workers[worker_id].release(job.id)

    def let_go(self, worker_id: str, job_id: uuid.UUID) -> None:
        """The worker reported the job: a slot it kept for a cancelled attempt is free."""
        worker = self.workers.get(worker_id)
        if worker:
            worker.release(job_id, cancelled=True)

    # --- heartbeats ----------------------------------------------------------------------------

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
        self.now = max(self.now, now)
        self._note_served(status, now)
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
        grace = max(self.reconcile_grace_s, 3 * view.status.heartbeat_interval_s)
        for job_id, (since, reported_seq) in list(view.missing.items()):
            if now - since < grace or self.commands_seq < reported_seq:
                continue
            del view.missing[job_id]
            job = self.jobs.get(job_id)
            if job is None or job.status is not JobStatus.RUNNING or job.worker_id != view.status.worker_id:
                continue
            log.warning(
                "worker %s does not hold job %s attempt %d (missing for %.1fs): requeued",
                view.status.worker_id,
                job_id,
                job.attempt,
                now - since,
            )
            self.retry(
                job,
                "ATTEMPT_LOST",
                f"worker {view.status.worker_id} never ran attempt {job.attempt} (not held for {now - since:.0f}s)",
                "scheduler:reconcile",
            )

    def connection_lost(self) -> None:
        """The scheduler's NATS connection dropped: heartbeats cannot reach it until it is back."""
        self.connected = False

    def connection_back(self, now: float | None = None) -> None:
        """Connected again: every worker gets a full timeout from now (its silence while the
        scheduler was away says nothing), and missing attempts are judged afresh."""
        now = time.monotonic() if now is None else now
        self.connected = True
        self.judge_afresh(now)

    def judge_afresh(self, now: float) -> None:
        """Every worker gets a full timeout from `now`: for a stretch in which the scheduler could not
        hear heartbeats (its connection was down, or its own process stalled and left them unread)."""
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
            self.retry(job, "WORKER_LOST", reason, "scheduler:worker-lost")
        view.clear()
        self.out.effects.purge_workers.append(view.status.worker_id)

    def tick(self, now: float) -> None:
        """Declare workers lost whose heartbeats stopped, and requeue the attempts they do not hold."""
        self.now = max(self.now, now)
        for worker_id, view in list(self.workers.items()):
            if not self.connected:
                break  # a worker's silence is judged only over time the scheduler could hear it
            if view.gone:
                if view.running and view.left_at is not None and now - view.left_at > self.worker_timeout_s:
                    self._lose_worker(view, "the worker left without reporting these jobs")
                if not view.running:
                    del self.workers[worker_id]
                continue
            if now - view.last_seen > self.worker_timeout_s:
                log.warning("worker %s missed its heartbeats for %.1fs: declared lost", worker_id, now - view.last_seen)
                self._lose_worker(view, f"no heartbeat for {now - view.last_seen:.0f}s")
                del self.workers[worker_id]
            elif view.missing:
                self._requeue_missing(view, now)
