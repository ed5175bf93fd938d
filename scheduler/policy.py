"""Which waiting job a worker with a free slot gets next: the queue policy, pure and clock-free.

The scheduler calls it with wall-clock seconds; bench/scheduling.py calls the same code with a
simulated clock, next to two baselines (plain FIFO and the seeds' naive algorithm). The policy
and its parameters are described in docs/scheduling.md; in short, for one free slot:

1. Candidates are the first waiting job of each (model, tier, user) that this worker serves, fits
   (image size), and whose user is below the plan's concurrent-jobs limit.
2. Rank, highest first: (a) starvation: 0 until a job has waited `starvation_s`, then 1 plus one
   per `starvation_step_s` beyond, so no job waits forever, however busy the higher tiers are;
   (b) the effective tier: the tier plus one per `aging_step_s` waited, capped at the top tier, so
   a long-waiting job overtakes fresher jobs of the tiers below; (c) the real tier; (d) the user
   with the fewest jobs running, then the user served longest ago, so one user's backlog cannot
   starve another user of the same tier; (e) the oldest job.
3. Model affinity: if the best candidate's model is not loaded on this worker and a candidate
   for a loaded model exists, the worker takes that one instead when it has the same starvation
   and effective tier, or when the best candidate has waited less than `affinity_hold_s` (and is
   not starving). A model switch costs 30-60 s against 0-5 s (ARCHITECTURE §7.3); the hold and
   the starvation guard bound what a higher tier can lose to affinity.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

TOP_TIER = 3


@dataclass(slots=True)
class Waiting:
    """A job in the queue, as the policy sees it."""

    job_id: uuid.UUID
    user_id: uuid.UUID
    model: str
    priority: int
    order: int  # admission order: FIFO among equals
    enqueued_at: float  # seconds, on the caller's clock
    size: int = 0  # longest side in pixels (images and video); 0 otherwise


@dataclass(frozen=True, slots=True)
class Slot:
    """A worker with at least one free slot."""

    worker_id: str
    models: frozenset[str]
    loaded: frozenset[str] = frozenset()
    max_resolution: int | None = None  # None: any size

    def fits(self, job: Waiting) -> bool:
        return job.model in self.models and (self.max_resolution is None or job.size <= self.max_resolution)


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    aging_step_s: float = 120.0
    affinity_hold_s: float = 30.0
    starvation_s: float = 900.0
    starvation_step_s: float = 600.0


class Pick(NamedTuple):
    job: Waiting
    reason: str


class QueuePolicy(Protocol):
    """What the scheduler (and the bench's simulator) needs of a queue policy."""

    def push(self, job: Waiting) -> None: ...

    def remove(self, job_id: uuid.UUID) -> Waiting | None: ...

    def pick(
        self, slot: Slot, now: float, running: Mapping[uuid.UUID, int], limit: Callable[[uuid.UUID], int]
    ) -> Pick | None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Waiting]: ...


class _Lanes:
    """Waiting jobs by (model, tier, user), FIFO in each; removal is lazy."""

    def __init__(self) -> None:
        self.jobs: dict[uuid.UUID, Waiting] = {}
        self.lanes: dict[str, dict[int, dict[uuid.UUID, deque[Waiting]]]] = {}

    def push(self, job: Waiting) -> None:
        """Add a job to its lane in `order`: at the end, except for a job requeued after a newer one."""
        self.jobs[job.job_id] = job
        lane = self.lanes.setdefault(job.model, {}).setdefault(job.priority, {}).setdefault(job.user_id, deque())
        if lane and lane[-1].order > job.order:
            lane.insert(next(i for i, waiting in enumerate(lane) if waiting.order > job.order), job)
        else:
            lane.append(job)

    def remove(self, job_id: uuid.UUID) -> Waiting | None:
        return self.jobs.pop(job_id, None)

    def __len__(self) -> int:
        return len(self.jobs)

    def __iter__(self) -> Iterator[Waiting]:
        return iter(list(self.jobs.values()))

    def heads(self, models: Iterable[str]) -> Iterable[Waiting]:
        """The first live job of every (model, tier, user) for these models."""
        for model in models:
            tiers = self.lanes.get(model)
            if not tiers:
                continue
            for tier in list(tiers):
                users = tiers[tier]
                for user_id in list(users):
                    queue = users[user_id]
                    while queue and self.jobs.get(queue[0].job_id) is not queue[0]:
                        queue.popleft()
                    if queue:
                        yield queue[0]
                    else:
                        del users[user_id]
                if not users:
                    del tiers[tier]


class _OnLanes:
    """What every policy here shares: the waiting jobs, kept in lanes."""

    _lanes: _Lanes

    def push(self, job: Waiting) -> None:
        self._lanes.push(job)

    def remove(self, job_id: uuid.UUID) -> Waiting | None:
        return self._lanes.remove(job_id)

    def __len__(self) -> int:
        return len(self._lanes)

    def __iter__(self) -> Iterator[Waiting]:
        return iter(self._lanes)


@dataclass
class TesseraPolicy(_OnLanes):
    """Tiers with aging, fairness between users, and bounded model affinity (module docstring)."""

    config: PolicyConfig = field(default_factory=PolicyConfig)
    _lanes: _Lanes = field(default_factory=_Lanes)
    _served: dict[uuid.UUID, int] = field(default_factory=dict)  # user -> pick number of their last job
    _picks: int = 0

    def effective_tier(self, job: Waiting, now: float) -> int:
        """The tier plus one per aging step waited, uncapped: a tier is worth `aging_step_s` of waiting."""
        if self.config.aging_step_s <= 0:
            return job.priority
        return min(TOP_TIER, job.priority + int(max(0.0, now - job.enqueued_at) // self.config.aging_step_s))

    def starving(self, job: Waiting, now: float) -> int:
        """0 until the job has waited `starvation_s`; then 1, plus one per `starvation_step_s` beyond."""
        waited = now - job.enqueued_at
        if waited < self.config.starvation_s:
            return 0
        return 1 + int((waited - self.config.starvation_s) // max(self.config.starvation_step_s, 1.0))

    def pick(
        self, slot: Slot, now: float, running: Mapping[uuid.UUID, int], limit: Callable[[uuid.UUID], int]
    ) -> Pick | None:
        best: tuple[tuple[int, int, int, int, int, int], Waiting] | None = None
        best_loaded: tuple[tuple[int, int, int, int, int, int], Waiting] | None = None
        for job in self._lanes.heads(slot.models):
            if not slot.fits(job) or running.get(job.user_id, 0) >= limit(job.user_id):
                continue
            key = (
                self.starving(job, now),
                self.effective_tier(job, now),
                job.priority,
                -running.get(job.user_id, 0),
                -self._served.get(job.user_id, -1),
                -job.order,
            )
            if best is None or key > best[0]:
                best = (key, job)
            if job.model in slot.loaded and (best_loaded is None or key > best_loaded[0]):
                best_loaded = (key, job)
        if best is None:
            return None
        job, tier = best[1], best[0][1]
        reason = (
            f"tier {job.priority} (effective {tier}), user had {running.get(job.user_id, 0)} running, "
            f"waited {now - job.enqueued_at:.1f}s"
        )
        if slot.loaded and job.model not in slot.loaded and best_loaded is not None:
            held = now - job.enqueued_at
            if best_loaded[0][:2] >= best[0][:2] or (held < self.config.affinity_hold_s and not best[0][0]):
                other = job
                job = best_loaded[1]
                reason = (
                    f"model affinity: {job.model} is loaded on {slot.worker_id}; tier {job.priority} "
                    f"(effective {best_loaded[0][1]}) taken before {other.model} tier {other.priority}, "
                    f"which has waited {held:.1f}s (hold {self.config.affinity_hold_s:.0f}s)"
                )
        elif job.model in slot.loaded:
            reason += f"; {job.model} is loaded"
        self._lanes.remove(job.job_id)
        self._picks += 1
        self._served[job.user_id] = self._picks
        return Pick(job, reason)


@dataclass
class FifoPolicy(_OnLanes):
    """Baseline: the oldest job any free worker can run, whatever its tier or model."""

    _lanes: _Lanes = field(default_factory=_Lanes)

    def pick(
        self, slot: Slot, now: float, running: Mapping[uuid.UUID, int], limit: Callable[[uuid.UUID], int]
    ) -> Pick | None:
        candidates = [
            j for j in self._lanes.heads(slot.models) if slot.fits(j) and running.get(j.user_id, 0) < limit(j.user_id)
        ]
        if not candidates:
            return None
        job = min(candidates, key=lambda j: j.order)
        self._lanes.remove(job.job_id)
        return Pick(job, "fifo: oldest job")


@dataclass
class SeedsNaivePolicy(_OnLanes):
    """Baseline: the seeds' algorithm (ARCHITECTURE §7.2), tier by tier from the top, taking a
    tier's first compatible job if its model is loaded, else the highest tier's first job."""

    _lanes: _Lanes = field(default_factory=_Lanes)

    def pick(
        self, slot: Slot, now: float, running: Mapping[uuid.UUID, int], limit: Callable[[uuid.UUID], int]
    ) -> Pick | None:
        heads: dict[int, Waiting] = {}  # tier -> its first compatible job
        for job in self._lanes.heads(slot.models):
            if slot.fits(job) and running.get(job.user_id, 0) < limit(job.user_id):
                if job.priority not in heads or job.order < heads[job.priority].order:
                    heads[job.priority] = job
        if not heads:
            return None
        for tier in sorted(heads, reverse=True):
            if heads[tier].model in slot.loaded:
                job = heads[tier]
                break
        else:
            job = heads[max(heads)]
        self._lanes.remove(job.job_id)
        return Pick(job, "seeds §7.2")
