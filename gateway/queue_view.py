"""Queue positions and service rates as this gateway last saw them, read at most once a second.

GET /api/v1/jobs/{id} and each SSE status tick used to count the queue's rows per request. Here one
read a second (every waiting job's place in queue order, and each model's completions so far) serves
every request in between: a position is two binary searches, a rate the scheduler's own
`rules.ServiceRate` fed from the completions the read models count. A snapshot lags the queue by up
to a second plus the projector's lag; the 202's position is the scheduler's exact one.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import defaultdict

import asyncpg

from projector import queries
from scheduler import rules

EWMA_WEIGHT = 0.2  # weight of the newest window's mean in a model's execution-time average (as the scheduler)


class QueueView:
    """The snapshot, refreshed on demand when older than `max_age_s`."""

    def __init__(self, capabilities: dict[str, str], max_age_s: float = 1.0) -> None:
        self.capabilities = capabilities  # model -> capability: a model is backlogged while its capability waits
        self.max_age_s = max_age_s
        self.orders: dict[tuple[str, int], list[int]] = {}
        self.rates: dict[str, rules.ServiceRate] = {}
        self.execution_s: dict[str, float] = {}
        self._totals: dict[str, tuple[int, float]] = {}
        self._at = -float("inf")
        self._lock = asyncio.Lock()

    async def fresh(self, pool: asyncpg.Pool) -> QueueView:
        if time.monotonic() - self._at >= self.max_age_s:
            async with self._lock:  # concurrent requests share one read
                if time.monotonic() - self._at >= self.max_age_s:
                    async with pool.acquire() as conn:
                        await self._refresh(conn)
        return self

    async def _refresh(self, conn: asyncpg.Connection) -> None:
        orders: dict[tuple[str, int], list[int]] = defaultdict(list)
        for row in await queries.queue_orders(conn):  # already sorted: each list stays sorted
            orders[(row["capability"], row["priority"])].append(row["enqueued_seq"])
        completions = await queries.model_completions(conn)
        now = time.monotonic()
        waiting = {capability for capability, _ in orders}
        for row in completions:
            model, count, total = row["model"], int(row["jobs_completed"]), float(row["total_execution_seconds"])
            before_count, before_total = self._totals.get(model, (0, 0.0))
            if count > before_count:
                mean = (total - before_total) / (count - before_count)
                previous = self.execution_s.get(model)
                self.execution_s[model] = mean if previous is None else previous + EWMA_WEIGHT * (mean - previous)
            self._totals[model] = (count, total)
            capability = self.capabilities.get(model)
            self.rates.setdefault(model, rules.ServiceRate()).observe(now, count, capability in waiting)
        self.orders, self._at = dict(orders), now

    def position(self, capability: str, priority: int, queued_seq: int) -> int:
        """Jobs waiting for `capability` at a higher tier, and at this one queued before `queued_seq`."""
        higher = sum(len(seqs) for (cap, prio), seqs in self.orders.items() if cap == capability and prio > priority)
        return higher + bisect.bisect_left(self.orders.get((capability, priority), []), queued_seq)

    def per_s(self, model: str) -> float | None:
        rate = self.rates.get(model)
        return rate.per_s if rate else None


# id(pool) -> (pool, its view). An asyncpg pool takes no weak reference; holding the pool keeps its id
# from being reused by another one (a test's next database) while the entry exists.
_VIEWS: dict[int, tuple[asyncpg.Pool, QueueView]] = {}


async def view(pool: asyncpg.Pool, capabilities: dict[str, str]) -> QueueView:
    """This gateway's snapshot (one per database pool), at most a second old."""
    entry = _VIEWS.get(id(pool))
    if entry is None or entry[0] is not pool:
        entry = _VIEWS[id(pool)] = (pool, QueueView(capabilities))
    return await entry[1].fresh(pool)
