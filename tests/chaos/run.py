"""One chaos run: start the platform, load it, kill every component once, settle, check."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nats

from streams import subjects as s
from streams.messages import DefinePlan
from tessera.admin import create_user, define_plan, migrate
from tests.chaos import checks
from tests.chaos.cluster import Cluster, Timing
from tests.chaos.faults import FaultRecord, Faults, Tap
from tests.chaos.load import Job, Load, User, make_jobs

log = logging.getLogger("tessera.chaos")

PLAN = "chaos"  # a plan with a daily token limit (so the quota ledger works) that the load never reaches


@dataclass(frozen=True, kw_only=True)
class ChaosConfig:
    jobs: int = 300
    seed: int = 1
    rate: float | None = None  # submits per second; None: spread the jobs over the kill plan
    users: int = 3
    settle_s: float = 120.0
    timing: Timing = field(default_factory=Timing)
    gap_s: tuple[float, float] = (1.0, 4.0)  # calm before each kill
    restart_s: tuple[float, float] = (1.0, 3.0)  # down time after each kill


@dataclass
class Report:
    config: ChaosConfig
    data_dir: Path
    figures: dict[str, float]
    findings: checks.Findings
    faults: list[FaultRecord]
    histories: dict[str, list[str]]
    elapsed_s: float
    errors: dict[str, int]
    outage_causes: str  # the failed submits of the longest outage, by cause

    @property
    def ok(self) -> bool:
        return not any(self.findings.violations.values())

    def text(self, histories: int = 8) -> str:
        f = self.figures
        c = self.config
        lines = [
            f"chaos run: seed {c.seed}, {c.jobs} jobs, {self.elapsed_s:.0f}s, data {self.data_dir}",
            "  " + "  ".join(f"{name} {_num(value)}" for name, value in f.items()),
        ]
        counts = self.findings.counts
        lines.append("  log: " + ", ".join(f"{k} {_num(v)}" for k, v in sorted(counts.items())))
        if self.errors:
            lines.append("  failed submits: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.errors.items())))
            lines.append(f"  longest outage, from +{self.figures['outage at s']}s: {self.outage_causes}")
        lines += ["  kills:"] + [f"    {r.line()}" for r in self.faults]
        sections = [(f"VIOLATED {k}", v) for k, v in self.findings.violations.items()]
        sections += [(f"NOTE {k}", v) for k, v in self.findings.notes.items()]
        for title, found in sections:
            if not found:
                continue
            lines.append(f"  {title}: {len(found)}")
            for n, (key, why) in enumerate(found.items()):
                if n >= histories:
                    lines.append(f"    ... and {len(found) - histories} more")
                    break
                lines.append(f"    {key}: {why}")
                lines += [f"      {h}" for h in self.histories.get(key, [])]
        return "\n".join(lines)


def _num(value: float) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


async def _start(cluster: Cluster) -> None:
    await asyncio.to_thread(cluster.start_servers)
    await migrate(cluster.database_url, cluster.nats_url)
    cluster.add_services()
    cluster.start("scheduler-a")
    await cluster.wait_leader(60)
    for name in cluster.services:
        if name != "scheduler-a":
            cluster.start(name)
    await cluster.wait_ready()


async def _setup_users(cluster: Cluster, count: int, tag: str) -> list[User]:
    await define_plan(
        cluster.nats_url,
        cluster.database_url,
        DefinePlan(
            command_id=uuid.uuid4(),
            tier=PLAN,
            name="Chaos",
            daily_token_limit=1_000_000,
            requests_per_minute=1_000_000,
            max_concurrent_jobs=100_000,
            max_queued_jobs=1_000_000,
            priority=2,
            max_resolution=1024,
            allowed_models=["*"],
            price_cents=0,
        ),
    )
    users = []
    for n in range(count):
        user_id, key = await create_user(
            cluster.nats_url, cluster.database_url, platform="web", user_id=f"chaos-{tag}-{n}", plan=PLAN
        )
        users.append(User(user_id, key))
    return users


async def _wait_workers(cluster: Cluster, timeout_s: float = 60.0) -> None:
    nc = await nats.connect(cluster.nats_url)
    try:
        kv = await nc.jetstream().key_value(s.WORKERS_BUCKET)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if set(cluster.worker_ids) <= set(await kv.keys()):
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError("the workers did not announce themselves")
    finally:
        await nc.close()


def default_rate(config: ChaosConfig) -> float:
    """Spread the submits over the kill plan's expected length, so every kill happens under load."""
    kills = 7
    expected = kills * (sum(config.gap_s) / 2 + sum(config.restart_s) / 2 + 3) + 5
    return max(config.jobs / expected, 2.0)


async def run_chaos(config: ChaosConfig, data_dir: Path) -> Report:
    rng = random.Random(config.seed)
    found = checks.Findings()
    cluster = Cluster(data_dir, timing=config.timing)
    tap = Tap()
    started = time.monotonic()
    try:
        await _start(cluster)
        tag = uuid.uuid4().hex[:6]
        users = await _setup_users(cluster, config.users, tag)
        await _wait_workers(cluster)
        await tap.start(cluster.nats_url)
        jobs = make_jobs(config.jobs, users, rng, run_tag=tag)
        load = Load(cluster.api_url, jobs, config.rate or default_rate(config))
        origin, origin_wall = time.monotonic(), time.time()
        faults = Faults(cluster, tap, rng, origin, gap_s=config.gap_s, restart_s=config.restart_s)
        load_task = asyncio.create_task(load.run(), name="chaos-load")
        try:
            await faults.run()
        finally:
            for n, what in enumerate(faults.unrecovered):
                found.add("unrecovered", f"#{n + 1}", what)
        await load_task
        log.info("chaos: load done; settling")
        accepted = [j.job_id for j in jobs if j.accepted_at is not None]
        settled = await checks.settle(cluster.database_url, accepted, config.settle_s)
        report = await _check(config, cluster, users, jobs, load, faults.records, origin, origin_wall, found)
        report.figures["settle s"] = round(settled, 1)
        report.elapsed_s = time.monotonic() - started
        return report
    finally:
        await tap.close()
        await asyncio.to_thread(cluster.close)


async def _check(
    config: ChaosConfig,
    cluster: Cluster,
    users: list[User],
    jobs: list[Job],
    load: Load,
    faults: list[FaultRecord],
    origin: float,
    origin_wall: float,
    found: checks.Findings,
) -> Report:
    import asyncpg

    conn = await asyncpg.connect(cluster.database_url)
    try:
        log_ = await checks.load_log(conn)
        checks.check_log(jobs, log_, found)
        checks.check_requeues(log_, faults, origin_wall, config.timing.worker_timeout_s, found)
        charged = checks.check_prices(jobs, log_, found)
        await checks.check_api(cluster.api_url, users, jobs, log_, charged, found)
        await checks.check_notifications(cluster.nats_url, log_, found, jobs)
        # Stop everything but the projector, let it finish, stop it: the read models are final.
        await asyncio.to_thread(cluster.stop_services, [n for n in cluster.services if n != "projector"])
        if not await checks.caught_up(cluster.database_url, 30):
            found.add("drift", "projector", "the projector did not fold the whole log within 30s")
        await asyncio.to_thread(cluster.stop_services, ["projector"])
        await checks.check_usage(conn, charged, found)
    finally:
        await conn.close()
    await checks.check_drift(cluster.database_url, cluster.env(), found)
    by_id = {str(j.job_id): j for j in jobs}
    histories = {}
    for found_keys in [*found.violations.values(), *found.notes.values()]:
        for key in list(found_keys)[:50]:
            with contextlib.suppress(ValueError):
                histories[key] = checks.history(log_.get(uuid.UUID(key), []), by_id.get(key))
    for job in jobs:
        if job.cancel_after_s is not None and job.accepted_at is not None:
            found.counts[f"cancel answered {job.cancel_status} {job.cancel_answer}"] += 1
    outage, outage_at, outage_causes = load.longest_outage(origin)
    accepted = sum(j.accepted_at is not None for j in jobs)
    figures: dict[str, float] = {"accepted": accepted}
    figures |= {name: len(found.violations[name]) for name in checks.VIOLATIONS}
    figures["drift"] = found.counts["drifted rows"] + sum(
        1 for k in found.violations["drift"] if not k.startswith(checks.READ_MODEL_TABLES)
    )
    figures["longest outage s"] = round(outage, 2)
    figures["outage at s"] = round(outage_at, 1)
    figures["never accepted"] = sum(j.accepted_at is None for j in jobs)
    figures["refused"] = sum(j.refused is not None for j in jobs)
    figures["requeued from live workers"] = len(found.notes.get("requeued from a live worker", {}))
    return Report(
        config=config,
        data_dir=cluster.data_dir,
        figures=figures,
        findings=found,
        faults=faults,
        histories=histories,
        elapsed_s=0.0,
        errors=load.errors,
        outage_causes=outage_causes,
    )
