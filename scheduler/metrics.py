"""The scheduler's metrics: what it decided (counters, fed once per committed batch) and, on the
leader only, the queue and the fleet as it sees them (gauges, read from its state at each scrape).

A standby exports no queue or fleet gauge, so summing over every scheduler never counts a job or a
worker twice; every scheduler says whether it leads (`tessera_scheduler_leader`).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from base.metrics import DURATION_BUCKETS, LATENCY_BUCKETS, Children
from events.types import JobCancelled, JobCompleted, JobDispatched, JobFailed, JobSubmitted, RecordedEvent
from streams.messages import Decision, SubmitJob

if TYPE_CHECKING:
    from scheduler.leadership import Leadership
    from scheduler.outbox import Outbox
    from scheduler.state import SchedulerState

_JOB = ["capability", "tier"]
SUBMITTED = Children(Counter("tessera_jobs_submitted_total", "Job submits the scheduler decided on", ["capability"]))
REFUSED = Children(Counter("tessera_jobs_refused_total", "Job submits refused, by refusal code", ["code"]))
ADMITTED = Children(Counter("tessera_jobs_admitted_total", "Jobs admitted to the queue", _JOB))
COMPLETED = Children(Counter("tessera_jobs_completed_total", "Jobs that completed", _JOB))
FAILED = Children(Counter("tessera_jobs_failed_total", "Jobs that failed", _JOB))
CANCELLED = Children(Counter("tessera_jobs_cancelled_total", "Jobs cancelled", _JOB))
TOKENS = Children(Counter("tessera_tokens_charged_total", "Tokens charged for completed jobs", _JOB))
WAIT = Children(
    Histogram("tessera_job_wait_seconds", "From admission to first dispatch", ["capability"], buckets=DURATION_BUCKETS)
)
RUN = Children(
    Histogram("tessera_job_run_seconds", "Execution time of completed jobs", ["capability"], buckets=DURATION_BUCKETS)
)
BATCH = Histogram(
    "tessera_scheduler_batch_commands",
    "Commands the scheduler fetched and decided in one batch",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 512),
)
COMMIT = Histogram(
    "tessera_scheduler_commit_seconds", "Time to append one batch's events (one transaction)", buckets=LATENCY_BUCKETS
)


def submitted(command: SubmitJob, replies: Sequence[tuple[str, object, Decision]], before: int) -> None:
    """Count a submit the state has just decided, and its refusal (a reply added since `before`)."""
    SUBMITTED(command.capability).inc()
    for _reply_to, _job, decision in replies[before:]:
        if not decision.ok:
            REFUSED(decision.code or "UNKNOWN").inc()


def committed(scheduler: Leadership, records: list[RecordedEvent], outbox: Outbox, started: float) -> None:
    """Count what a committed batch did to jobs (before the state forgets the finished ones), and
    the commit's latency since `started` (`time.perf_counter()`)."""
    COMMIT.observe(time.perf_counter() - started)
    if records:
        _heads[scheduler] = (records[-1].seq, outbox)
    state = scheduler.state
    if state is None:
        return
    now = time.time()
    for rec in records:
        event = rec.data
        if not isinstance(event, _COUNTED):
            continue
        job = state.jobs.get(rec.stream_id)
        if job is None:
            continue
        user = state.users.get(job.user_id)
        key = (job.capability, user.plan if user is not None else "unknown")
        match event:
            case JobSubmitted():
                ADMITTED(*key).inc()
            case JobDispatched(attempt=1) if job.queued_at is not None:
                WAIT(job.capability).observe(max(now - job.queued_at.timestamp(), 0.0))
            case JobCompleted():
                COMPLETED(*key).inc()
                TOKENS(*key).inc(event.cost_tokens)
                RUN(job.capability).observe(event.execution_time_seconds)
            case JobFailed():
                FAILED(*key).inc()
            case JobCancelled():
                CANCELLED(*key).inc()


_COUNTED = (JobSubmitted, JobDispatched, JobCompleted, JobFailed, JobCancelled)
# Each leader's last committed sequence and its outbox, whose relayed position is read at a scrape.
_heads: weakref.WeakKeyDictionary[Leadership, tuple[int, Outbox]] = weakref.WeakKeyDictionary()


# --- gauges, read at each scrape -----------------------------------------------------------------

_schedulers: weakref.WeakSet[Leadership] = weakref.WeakSet()


def watch(scheduler: Leadership) -> None:
    """Export this scheduler's role, and while it leads, its queue, fleet and outbox lag."""
    _schedulers.add(scheduler)


def unwatch(scheduler: Leadership) -> None:
    """The scheduler stopped: it is no longer exported (another of its name may start later)."""
    _schedulers.discard(scheduler)


class SchedulerCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        leader = GaugeMetricFamily(
            "tessera_scheduler_leader", "1 for the scheduler that holds the lock, 0 for a standby", labels=["scheduler"]
        )
        leading = []
        for scheduler in list(_schedulers):
            is_leader = scheduler.is_leader.is_set() and scheduler.state is not None
            leader.add_metric([scheduler.name], 1 if is_leader else 0)
            if is_leader:
                leading.append(scheduler)
        yield leader
        for scheduler in leading:
            assert scheduler.state is not None
            yield from _queue(scheduler.state)
            yield from _fleet(scheduler.state)
            head_seq, outbox = _heads.get(scheduler, (0, None))
            lag = GaugeMetricFamily(
                "tessera_outbox_lag_events", "Committed events the leader has not yet published to NATS"
            )
            lag.add_metric([], max(head_seq - outbox.relayed_seq, 0) if outbox is not None else 0)
            yield lag
            head = GaugeMetricFamily("tessera_events_head_sequence", "The event log's last committed sequence")
            head.add_metric([], head_seq)
            yield head


def _queue(state: SchedulerState) -> Iterable[GaugeMetricFamily]:
    depth: dict[tuple[str, str], int] = {}
    oldest: dict[tuple[str, str], float] = {}
    now = state.clock()
    for waiting in list(state.queue.policy):
        user = state.users.get(waiting.user_id)
        key = (user.plan if user is not None else f"priority-{waiting.priority}", waiting.model)
        depth[key] = depth.get(key, 0) + 1
        oldest[key] = max(oldest.get(key, 0.0), now - waiting.enqueued_at)
    for tier in state.plans:  # every tier has a series, at 0 when nothing waits
        depth.setdefault((tier, ""), 0)
    gauge = GaugeMetricFamily("tessera_queue_depth", "Jobs waiting for a worker", labels=["tier", "model"])
    age = GaugeMetricFamily(
        "tessera_queue_oldest_wait_seconds", "How long the oldest waiting job has waited", labels=["tier", "model"]
    )
    for (tier, model), count in sorted(depth.items()):
        gauge.add_metric([tier, model], count)
        age.add_metric([tier, model], oldest.get((tier, model), 0.0))
    return [gauge, age]


def _fleet(state: SchedulerState) -> Iterable[GaugeMetricFamily]:
    def family(name: str, doc: str, labels: tuple[str, ...] = ("worker",)) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=list(labels))

    online = family("tessera_workers_online", "Workers announcing themselves and not gone", ())
    seen = family("tessera_worker_last_heartbeat_timestamp_seconds", "When the worker's last heartbeat was sent")
    slots = family("tessera_worker_slots", "Jobs the worker can run at once")
    busy = family("tessera_worker_slots_busy", "Slots taken by jobs the scheduler gave the worker")
    loaded = family("tessera_worker_loaded_models", "Models the worker holds loaded")
    gpu = ("worker", "gpu")
    used = family("tessera_worker_gpu_memory_used_bytes", "GPU memory in use", gpu)
    total = family("tessera_worker_gpu_memory_total_bytes", "GPU memory in all", gpu)
    util = family("tessera_worker_gpu_utilization_ratio", "GPU utilisation, 0 to 1", gpu)
    count = 0
    for worker_id, view in state.workers.items():
        if view.gone:
            continue
        count += 1
        status = view.status
        seen.add_metric([worker_id], status.sent_at.timestamp())
        slots.add_metric([worker_id], status.slots)
        busy.add_metric([worker_id], len(view.running) + len(view.cancelling))
        loaded.add_metric([worker_id], len(status.loaded_models))
        if status.gpu:
            index = str(status.gpu.get("index", 0))
            used.add_metric([worker_id, index], float(status.gpu.get("memory_used_mib", 0)) * 2**20)
            total.add_metric([worker_id, index], float(status.gpu.get("memory_total_mib", 0)) * 2**20)
            util.add_metric([worker_id, index], float(status.gpu.get("utilization_percent", 0)) / 100)
    online.add_metric([], count)
    return [online, seen, slots, busy, loaded, used, total, util]


REGISTRY.register(SchedulerCollector())
