"""The queue: the jobs that wait for a worker, in their order of admission, and the counts the
plans are enforced by (each user's waiting and running jobs, each capability's depth per tier).

Which waiting job a free slot takes is the queue policy's choice (scheduler.policy).
"""

from __future__ import annotations

import uuid
from collections import Counter

from base.catalog import Catalog
from events.job import Job
from scheduler.effects import Emitter
from scheduler.policy import QueuePolicy, Waiting


class Queue:
    """Waiting jobs and the per-user, per-tier counts kept in step with them."""

    def __init__(self, out: Emitter, catalog: Catalog, policy: QueuePolicy) -> None:
        self.out = out
        self.catalog = catalog
        self.policy = policy
        self.depth: dict[tuple[str, int], int] = {}  # (capability, priority) -> jobs waiting
        self.user_queued: Counter[uuid.UUID] = Counter()
        self.user_running: Counter[uuid.UUID] = Counter()
        self.admitted: dict[uuid.UUID, int] = {}  # unfinished job -> its place in the queue's order
        self.order = 0

    def next_order(self) -> int:
        self.order += 1
        return self.order

    def enqueue(self, job: Job) -> None:
        """Put a job in the queue: a new one behind those admitted before it, a requeued one back
        in its place of admission (its wait for a worker that was lost was not its fault)."""
        order = self.admitted.get(job.id)
        if order is None:
            order = self.admitted[job.id] = self.next_order()
        enqueued_at = job.queued_at.timestamp() if job.queued_at else self.out.clock()
        model = self.catalog.get(job.model)
        size = max(model.size(job.params)) if model else 0
        self.policy.push(
            Waiting(
                job_id=job.id,
                user_id=job.user_id,
                model=job.model,
                priority=job.priority,
                order=order,
                enqueued_at=enqueued_at,
                size=size,
            )
        )
        key = (job.capability, job.priority)
        self.depth[key] = self.depth.get(key, 0) + 1
        self.user_queued[job.user_id] += 1

    def dequeue(self, job: Job) -> None:
        """Count a job out of the queue (picked, cancelled or timed out)."""
        self.policy.remove(job.id)
        self.depth[(job.capability, job.priority)] -= 1
        self.user_queued[job.user_id] -= 1

    def position(self, job: Job) -> int:
        """Jobs that wait for the same capability at this tier or above, other than this one."""
        return max(
            0,
            sum(depth for (cap, prio), depth in self.depth.items() if cap == job.capability and prio >= job.priority)
            - 1,
        )
