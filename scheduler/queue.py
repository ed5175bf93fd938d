"""The queue: the jobs that wait for a worker, in their order of admission, and the counts the
plans are enforced by (each user's waiting and running jobs, each capability's depth per tier).

Which waiting job a free slot takes is the queue policy's choice (scheduler.policy).
"""

from __future__ import annotations

import bisect
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
        # (capability, priority) -> the queue orders of the jobs waiting there, sorted: a job's exact
        # place among its peers is a binary search, however long the queue.
        self.orders: dict[tuple[str, int], list[int]] = {}
        self.waiting_order: dict[uuid.UUID, int] = {}  # waiting job -> its order in `orders`
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
        bisect.insort(self.orders.setdefault(key, []), order)
        self.waiting_order[job.id] = order
        self.user_queued[job.user_id] += 1

    def dequeue(self, job: Job) -> None:
        """Count a job out of the queue (picked, cancelled or timed out)."""
        self.policy.remove(job.id)
        key = (job.capability, job.priority)
        self.depth[key] -= 1
        order = self.waiting_order.pop(job.id, None)
        orders = self.orders.get(key, [])
        at = bisect.bisect_left(orders, order) if order is not None else len(orders)
        if at < len(orders) and orders[at] == order:
            del orders[at]
        self.user_queued[job.user_id] -= 1

    def position(self, job: Job) -> int:
        """Jobs ahead of this waiting one for the same capability: every job waiting at a higher tier,
        and those of its own tier admitted before it."""
        higher = sum(
            depth for (cap, prio), depth in self.depth.items() if cap == job.capability and prio > job.priority
        )
        peers = self.orders.get((job.capability, job.priority), [])
        order = self.waiting_order.get(job.id)
        return higher + (bisect.bisect_left(peers, order) if order is not None else len(peers))
