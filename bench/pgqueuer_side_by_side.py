"""Tessera against pgqueuer, on the same machine in one run (issue 17: "a cheaper writer").

pgqueuer is a PostgreSQL job queue (LISTEN/NOTIFY, `FOR UPDATE SKIP LOCKED`): the floor of what a
queue on the same database costs. This bench runs N no-op jobs through it, each enqueued on its
own by one of M concurrent producers (as each Tessera job is one HTTP submit), and one consumer
process that runs them as fast as it can; then the same N echo jobs from M clients through
Tessera's HTTP API (`bench/throughput.py`'s saturation run). It prints both rates, the ratio, and
the CPU each spent per job (every process, PostgreSQL's backends included).

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/pgqueuer_side_by_side.py --jobs 20000 --clients 64

pgqueuer does less than Tessera per job: no authentication, plans, quotas, events, projections,
or result delivery. The ratio says what that costs, not which is better.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import asyncpg
from pgqueuer import AsyncpgDriver, Queries, QueueManager
from pgqueuer.models import Job

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.throughput import cpu_seconds  # noqa: E402
from tessera.embedded import EmbeddedPostgres  # noqa: E402

ENTRYPOINT = "noop"


async def consume(dsn: str, jobs: int, batch: int) -> None:
    """Run `jobs` no-op jobs, then stop."""
    conn = await asyncpg.connect(dsn)
    manager = QueueManager(Queries(AsyncpgDriver(conn)))
    done = 0

    @manager.entrypoint(ENTRYPOINT)
    async def noop(job: Job) -> None:
        nonlocal done
        done += 1
        if done >= jobs:
            manager.shutdown.set()

    await manager.run(batch_size=batch, dequeue_timeout=timedelta(seconds=1))
    await conn.close()


async def produce(dsn: str, jobs: int, clients: int) -> None:
    """Enqueue `jobs` jobs one at a time from `clients` concurrent connections."""
    pool = await asyncpg.create_pool(dsn, min_size=clients, max_size=clients)
    left = jobs

    async def client() -> None:
        nonlocal left
        async with pool.acquire() as conn:
            queries = Queries(AsyncpgDriver(conn))
            while left > 0:
                left -= 1
                await queries.enqueue(ENTRYPOINT, b"{}")

    await asyncio.gather(*(client() for _ in range(clients)))
    await pool.close()


def pgqueuer_run(jobs: int, clients: int, batch: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="pgq-bench-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg").start(preferred_port=None)
        try:

            async def install() -> None:
                conn = await asyncpg.connect(pg.url)
                await Queries(AsyncpgDriver(conn)).install()
                await conn.close()

            asyncio.run(install())
            postmaster = int((pg.pgdata / "postmaster.pid").read_text().split()[0])
            cpu_before = cpu_seconds(postmaster)
            started = time.perf_counter()
            me = [sys.executable, __file__, "--dsn", pg.url, "--jobs", str(jobs), "--clients", str(clients)]
            consumer = subprocess.Popen([*me, "--role", "consume", "--batch", str(batch)])
            producer = subprocess.Popen([*me, "--role", "produce"])
            cpu = {"consumer": 0.0, "producer": 0.0}
            while consumer.poll() is None:
                cpu = {"consumer": cpu_seconds(consumer.pid), "producer": max(cpu["producer"], _cpu(producer))}
                time.sleep(0.2)
            elapsed = time.perf_counter() - started
            producer.wait()
            assert consumer.returncode == 0 and producer.returncode == 0, "a pgqueuer process failed"
            postgres = cpu_seconds(postmaster) - cpu_before
        finally:
            pg.stop()
    return {"per_s": jobs / elapsed, "cpu_ms": 1000 * (sum(cpu.values()) + postgres) / jobs}


def _cpu(process: subprocess.Popen[bytes]) -> float:
    return cpu_seconds(process.pid) if process.poll() is None else 0.0


def tessera_run(jobs: int, clients: int) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "throughput.py"),
            "--jobs",
            str(jobs),
            "--clients",
            str(clients),
            "--seconds",
            "2",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    per_s = re.search(r"end-to-end completions per second \| ([0-9,]+) jobs/s", out)
    cpu = re.search(r"\| all \| ([0-9.]+) \|", out)
    assert per_s and cpu, out
    return {"per_s": float(per_s[1].replace(",", "")), "cpu_ms": float(cpu[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--batch", type=int, default=100, help="pgqueuer's dequeue batch")
    parser.add_argument("--role", choices=["compare", "consume", "produce"], default="compare")
    parser.add_argument("--dsn")
    args = parser.parse_args()
    if args.role == "consume":
        asyncio.run(consume(args.dsn, args.jobs, args.batch))
        return
    if args.role == "produce":
        asyncio.run(produce(args.dsn, args.jobs, args.clients))
        return
    pgq = pgqueuer_run(args.jobs, args.clients, args.batch)
    tes = tessera_run(args.jobs, args.clients)
    print(f"| {args.jobs} jobs, {args.clients} producers | jobs/s end to end | CPU per job, all processes |")
    print("|---|---|---|")
    print(f"| pgqueuer (no-op jobs) | {pgq['per_s']:,.0f} | {pgq['cpu_ms']:.2f} ms |")
    print(f"| Tessera (echo jobs over HTTP) | {tes['per_s']:,.0f} | {tes['cpu_ms']:.2f} ms |")
    print(f"\nTessera / pgqueuer: {tes['per_s'] / pgq['per_s']:.2f}x the rate")


if __name__ == "__main__":
    main()
