"""Queue policies on a simulated GPU fleet: Tessera's policy against FIFO and the seeds' algorithm.

A discrete-event simulation. Each GPU worker holds one model at a time; running a job of another
model first costs a switch of 30-60 s, the same model 0-5 s (ARCHITECTURE §7.3). Jobs arrive as a
Poisson stream from many users of the four tiers, each asking for a model its plan includes, and
each user may run only its plan's number of jobs at once. Every policy sees the same arrivals and
the same random durations. The policies are the scheduler's own classes (scheduler/policy.py).

    python bench/scheduling.py --hours 8 --workers 4 --rate 500

Prints jobs/hour, GPU busy fraction (switching or executing), executing fraction, model switches
and p50/p95/max wait (arrival to start) per tier. Jobs still waiting at the end count with the
time they had waited so far, so starvation shows in the max.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scheduler.policy import (
    FifoPolicy,
    PolicyConfig,
    QueuePolicy,
    SeedsNaivePolicy,
    Slot,
    TesseraPolicy,
    Waiting,
)

# Seconds of GPU time per job, by model (mean; each job varies +-25 %).
EXECUTION_S = {"sdxl": 12.0, "flux-schnell": 6.0, "flux-dev": 30.0, "ltx-video": 90.0}
# The models each tier's plan includes (the seed plans; admin also has video), and its share of jobs.
TIERS = {
    0: (["sdxl"], 0.45, 300, 1),  # models, share of arrivals, users, max concurrent jobs
    1: (["sdxl", "flux-schnell"], 0.25, 80, 2),
    2: (["sdxl", "flux-schnell", "flux-dev"], 0.22, 40, 4),
    3: (["sdxl", "flux-schnell", "flux-dev", "ltx-video"], 0.08, 4, 100_000),
}
TIER_NAMES = {0: "free", 1: "starter", 2: "pro", 3: "admin"}


@dataclass
class Arrival:
    at: float
    user: uuid.UUID
    tier: int
    model: str
    execution_s: float
    same_model_s: float
    switch_s: float


@dataclass
class Worker:
    name: str
    loaded: str | None = None
    busy_until: float = 0.0
    job: Waiting | None = None
    busy_s: float = 0.0
    executing_s: float = 0.0
    switches: int = 0


@dataclass
class Result:
    name: str
    completed: int = 0
    timed_out: int = 0
    waits: dict[int, list[float]] = field(default_factory=lambda: {t: [] for t in TIERS})
    workers: list[Worker] = field(default_factory=list)


def workload(hours: float, rate_per_hour: float, seed: int) -> list[Arrival]:
    rng = random.Random(seed)
    users = {tier: [uuid.UUID(int=rng.getrandbits(128)) for _ in range(spec[2])] for tier, spec in TIERS.items()}
    tiers, shares = list(TIERS), [spec[1] for spec in TIERS.values()]
    out, now = [], 0.0
    while True:
        now += rng.expovariate(rate_per_hour / 3600)
        if now >= hours * 3600:
            return out
        tier = rng.choices(tiers, shares)[0]
        model = rng.choice(TIERS[tier][0])
        out.append(
            Arrival(
                at=now,
                user=rng.choice(users[tier]),
                tier=tier,
                model=model,
                execution_s=EXECUTION_S[model] * rng.uniform(0.75, 1.25),
                same_model_s=rng.uniform(0, 5),
                switch_s=rng.uniform(30, 60),
            )
        )


def simulate(
    name: str, policy: QueuePolicy, arrivals: list[Arrival], workers: int, hours: float, queue_timeout_s: float
) -> Result:
    horizon = hours * 3600
    limits = {a.user: TIERS[a.tier][3] for a in arrivals}
    details = {}
    fleet = [Worker(f"gpu{n}") for n in range(workers)]
    models = frozenset(EXECUTION_S)
    running: dict[uuid.UUID, int] = {}
    result = Result(name, workers=fleet)
    events: list[tuple[float, int, str, int]] = [(a.at, n, "arrive", n) for n, a in enumerate(arrivals)]
    heapq.heapify(events)
    seq = len(arrivals)

    def start_jobs(now: float) -> None:
        nonlocal seq
        for worker in fleet:
            if worker.job is not None:
                continue
            slot = Slot(
                worker_id=worker.name,
                models=models,
                loaded=frozenset({worker.loaded}) if worker.loaded else frozenset(),
            )
            pick = policy.pick(slot, now, running, limits.__getitem__)
            if pick is None:
                continue
            job, arrival = pick.job, details[pick.job.job_id]
            result.waits[job.priority].append(now - arrival.at)
            overhead = arrival.same_model_s if worker.loaded == job.model else arrival.switch_s
            if worker.loaded != job.model:
                worker.switches += 1
            worker.loaded, worker.job = job.model, job
            worker.busy_until = now + overhead + arrival.execution_s
            end = min(worker.busy_until, horizon)
            worker.busy_s += max(0.0, end - now)
            worker.executing_s += max(0.0, end - max(now, worker.busy_until - arrival.execution_s))
            running[job.user_id] = running.get(job.user_id, 0) + 1
            seq += 1
            heapq.heappush(events, (worker.busy_until, seq, "finish", fleet.index(worker)))

    next_timeout_check = 0.0
    while events:
        now, _, kind, index = heapq.heappop(events)
        if now >= horizon:
            break
        if now >= next_timeout_check:  # as the scheduler does: fail what waited too long, once a second
            next_timeout_check = now + 1.0
            for job in list(policy):
                if now - job.enqueued_at > queue_timeout_s:
                    policy.remove(job.job_id)
                    result.timed_out += 1
                    result.waits[job.priority].append(now - job.enqueued_at)
        if kind == "arrive":
            arrival = arrivals[index]
            job_id = uuid.UUID(int=index)
            details[job_id] = arrival
            policy.push(
                Waiting(
                    job_id=job_id,
                    user_id=arrival.user,
                    model=arrival.model,
                    priority=arrival.tier,
                    order=index,
                    enqueued_at=arrival.at,
                    size=1024,
                )
            )
        else:
            worker = fleet[index]
            assert worker.job is not None
            running[worker.job.user_id] -= 1
            worker.job = None
            result.completed += 1
        start_jobs(now)
    for job in policy:  # still waiting at the end: their wait so far
        result.waits[job.priority].append(horizon - job.enqueued_at)
    return result


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(results: list[Result], hours: float, workers: int) -> None:
    base = results[1].completed
    print(
        "| policy | jobs/hour | vs FIFO | timed out | GPU busy | executing | model switches |"
        + "".join(f" {TIER_NAMES[t]} wait p50 / p95 / max (s) |" for t in sorted(TIERS, reverse=True))
    )
    print("|---|---|---|---|---|---|---|" + "---|" * len(TIERS))
    for r in results:
        busy = sum(w.busy_s for w in r.workers) / (workers * hours * 3600)
        executing = sum(w.executing_s for w in r.workers) / (workers * hours * 3600)
        waits = "".join(
            f" {percentile(r.waits[t], 0.5):.0f} / {percentile(r.waits[t], 0.95):.0f} / "
            f"{max(r.waits[t], default=float('nan')):.0f} |"
            for t in sorted(TIERS, reverse=True)
        )
        print(
            f"| {r.name} | {r.completed / hours:.0f} | {r.completed / base:.2f}x | {r.timed_out} | {busy:.0%} | "
            f"{executing:.0%} | "
            f"{sum(w.switches for w in r.workers)} |{waits}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=8.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=500.0, help="job arrivals per hour")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--aging-step", type=float, default=PolicyConfig().aging_step_s)
    parser.add_argument("--affinity-hold", type=float, default=PolicyConfig().affinity_hold_s)
    parser.add_argument("--starvation", type=float, default=PolicyConfig().starvation_s)
    parser.add_argument("--queue-timeout", type=float, default=1800.0, help="as TESSERA_QUEUE_TIMEOUT")
    args = parser.parse_args()
    arrivals = workload(args.hours, args.rate, args.seed)
    print(
        f"{len(arrivals)} jobs over {args.hours:g} h ({args.rate:g}/h offered) on {args.workers} GPUs; "
        f"tier shares {', '.join(f'{TIER_NAMES[t]} {s[1]:.0%}' for t, s in TIERS.items())}; "
        f"aging step {args.aging_step:g} s, affinity hold {args.affinity_hold:g} s, starvation "
        f"{args.starvation:g} s, queue timeout {args.queue_timeout:g} s; seed {args.seed}\n"
    )
    config = PolicyConfig(
        aging_step_s=args.aging_step, affinity_hold_s=args.affinity_hold, starvation_s=args.starvation
    )
    results = [
        simulate(name, policy, arrivals, args.workers, args.hours, args.queue_timeout)
        for name, policy in (
            ("tessera", TesseraPolicy(config)),
            ("fifo", FifoPolicy()),
            ("seeds §7.2", SeedsNaivePolicy()),
        )
    ]
    report(results, args.hours, args.workers)


if __name__ == "__main__":
    main()
