"""How long a new scheduler leader takes to load its state, as the log grows: before and after
migration 0011 (issue 17, part 2), query by query.

Starts an embedded PostgreSQL of its own, applies the migrations before 0011, and writes a
synthetic log straight into the event store with COPY: `--users` users (registered, one key
each), `--jobs` finished jobs of four events each (submitted, queued, dispatched, completed with
a cost on today's or yesterday's quota day: the whole log is in the quota window, the worst case
for the old ledger query) and `--active` jobs still queued. Then it times, warm (best of
`--repeat`), the leader's load as the code was before (the plan and frontend streams through a
parameter, so no index; the token ledger as a join of every completion in the window to its
submit), applies 0011 (its index and its ledger's backfill, timed), and times the load as
`scheduler.leadership` does it now, with each query's time and the temp bytes PostgreSQL spilled.

    .venv/bin/python bench/recovery.py --jobs 250000          # 1 M events
    .venv/bin/python bench/recovery.py --jobs 1000000 --grow 250000   # 1 M, 2 M, 3 M, 4 M events
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from base.config import Settings  # noqa: E402
from base.db import SERVER_SETTINGS, init_connection  # noqa: E402
from events import store  # noqa: E402
from events.types import (  # noqa: E402
    ApiKeyIssued,
    Artifact,
    JobCompleted,
    JobDispatched,
    JobQueued,
    JobSubmitted,
    RecordedEvent,
    StreamType,
    UserRegistered,
    encode,
    event_type,
    user_stream_id,
)
from migrations import apply, available  # noqa: E402
from scheduler import queries  # noqa: E402
from scheduler.leadership import Leadership  # noqa: E402
from tessera.embedded import EmbeddedPostgres  # noqa: E402

_COPY_COLUMNS = ["event_id", "stream_type", "stream_id", "version", "type", "data", "recorded_at", "causation_id"]


def _row(stream_type: str, stream_id: uuid.UUID, version: int, event: Any, at: datetime) -> tuple[object, ...]:
    data = encode(event).decode()
    return (uuid.uuid4(), stream_type, stream_id, version, event_type(event), data, at, None)


async def migrate_before_0011(conn: asyncpg.Connection) -> None:
    """Apply the migrations numbered below 11, as `migrations.apply` would (the schema before this change)."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for number, name, sql in available():
        if number < 11:
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", number, name)


async def add_users(conn: asyncpg.Connection, users: int) -> list[uuid.UUID]:
    now = datetime.now(UTC)
    rows, ids = [], []
    for n in range(users):
        user_id = user_stream_id("web", f"bench-{n}")
        ids.append(user_id)
        rows.append(
            _row("user", user_id, 1, UserRegistered(platform="web", platform_user_id=f"bench-{n}", plan="pro"), now)
        )
        key = ApiKeyIssued(key_id=uuid.uuid4(), key_hash=uuid.uuid4().hex * 2, prefix="tsk_bench")
        rows.append(_row("user", user_id, 2, key, now))
    await conn.copy_records_to_table("events", records=rows, columns=_COPY_COLUMNS)
    return ids


def _job_rows(user_id: uuid.UUID, at: datetime, finished: bool) -> list[tuple[object, ...]]:
    job_id = uuid.uuid4()
    day = at.date()
    submitted = JobSubmitted(
        user_id=user_id, frontend="web", capability="echo", model="echo", params={"prompt": "bench"}, priority=2,
        cost_tokens=1.0,
    )  # fmt: skip
    rows = [
        _row("job", job_id, 1, submitted, at),
        _row("job", job_id, 2, JobQueued(priority=2, reserved_tokens=1.0, quota_day=day), at),
    ]
    if finished:
        text = Artifact(
            id=uuid.uuid4(), kind="text", format="txt", content_type="text/plain", size_bytes=5, text="bench"
        )
        rows.append(_row("job", job_id, 3, JobDispatched(worker_id="w1", attempt=1, reason="free slot"), at))
        completed = JobCompleted(
            worker_id="w1", attempt=1, artifacts=[text], execution_time_seconds=0.001, cost_tokens=1.0,
            reserved_tokens=1.0, quota_day=day,
        )  # fmt: skip
        rows.append(_row("job", job_id, 4, completed, at))
    return rows


async def add_jobs(conn: asyncpg.Connection, users: list[uuid.UUID], jobs: int, chunk: int = 50_000) -> None:
    """`jobs` finished jobs spread over the last 40 hours (today's and yesterday's quota days)."""
    now = datetime.now(UTC)
    done = 0
    while done < jobs:
        rows: list[tuple[object, ...]] = []
        for n in range(done, min(jobs, done + chunk)):
            at = now - timedelta(hours=40) * ((jobs - n) / jobs)
            rows += _job_rows(users[n % len(users)], at, finished=True)
        await conn.copy_records_to_table("events", records=rows, columns=_COPY_COLUMNS)
        done = min(jobs, done + chunk)


async def add_active(conn: asyncpg.Connection, users: list[uuid.UUID], active: int) -> None:
    now = datetime.now(UTC)
    rows: list[tuple[object, ...]] = []
    for n in range(active):
        rows += _job_rows(users[n % len(users)], now, finished=False)
    await conn.copy_records_to_table("events", records=rows, columns=_COPY_COLUMNS)
    await conn.execute(
        "INSERT INTO active_jobs (job_id)"
        " SELECT DISTINCT stream_id FROM events WHERE seq > (SELECT max(seq) FROM events) - $1",
        2 * active,
    )


async def temp_bytes(conn: asyncpg.Connection) -> int:
    await conn.execute("SELECT pg_stat_force_next_flush()")
    return int(await conn.fetchval("SELECT temp_bytes FROM pg_stat_database WHERE datname = current_database()"))


class Timer:
    """Each named query's best time over the repeats, in ms."""

    def __init__(self) -> None:
        self.best: dict[str, float] = {}

    async def __call__(self, name: str, work: Awaitable[Any]) -> Any:
        started = time.perf_counter()
        result = await work
        took = (time.perf_counter() - started) * 1000
        self.best[name] = min(self.best.get(name, took), took)
        return result


async def load_before(conn: asyncpg.Connection, t: Timer) -> None:
    """The leader's load as it was before 0011: the same reads, the old SQL where it changed."""
    cols = "seq, event_id, stream_type, stream_id, version, data::text AS data, recorded_at, causation_id"
    active = await t("active jobs' events", queries.load_active_jobs(conn))
    users = {r.data.user_id for r in active if isinstance(r.data, JobSubmitted)}
    for kind in (StreamType.PLAN, StreamType.FRONTEND):
        await t(f"{kind} streams", conn.fetch(f"SELECT {cols} FROM events WHERE stream_type = $1 ORDER BY seq", kind))
    await t("active users' streams", store.load_streams(conn, users))
    since = datetime.now(UTC).date() - timedelta(days=1)
    await t("tokens charged", store.tokens_charged(conn, since))
    await t("execution times", store.execution_times(conn))
    await t("last minute's submits", store.recent_submits(conn))
    await t("uploads counted", store.uploads_counted(conn, since))
    await t("head", store.head(conn))


async def load_after(conn: asyncpg.Connection, t: Timer) -> None:
    """The same reads as `Leadership._load` now makes them."""
    active: list[RecordedEvent] = await t("active jobs' events", queries.load_active_jobs(conn))
    users = {r.data.user_id for r in active if isinstance(r.data, JobSubmitted)}
    for kind in (StreamType.PLAN, StreamType.FRONTEND):
        await t(f"{kind} streams", store.load_stream_type(conn, kind))
    await t("active users' streams", store.load_streams(conn, users))
    since = datetime.now(UTC).date() - timedelta(days=1)
    await t("tokens charged", queries.tokens_charged(conn, since))
    await t("execution times", store.execution_times(conn))
    await t("last minute's submits", store.recent_submits(conn))
    await t("uploads counted", store.uploads_counted(conn, since))
    await t("head", store.head(conn))


Load = Callable[[asyncpg.Connection, Timer], Awaitable[None]]


async def measure(
    conn: asyncpg.Connection, repeat: int, load: Load, whole: Callable[[], Awaitable[object]]
) -> tuple[Timer, float, int]:
    t = Timer()
    spilled = await temp_bytes(conn)
    whole_best = float("inf")
    for _ in range(repeat):
        await load(conn, t)
        started = time.perf_counter()
        await whole()
        whole_best = min(whole_best, (time.perf_counter() - started) * 1000)
    return t, whole_best, (await temp_bytes(conn) - spilled) // (2 * repeat)


def report(title: str, t: Timer, whole_ms: float, spilled: int) -> None:
    print(f"\n| {title} | ms (best) |\n|---|---|")
    for name, ms in t.best.items():
        print(f"| {name} | {ms:,.1f} |")
    print(f"| **the whole load** (queries and folding into the state) | **{whole_ms:,.1f}** |")
    print(f"| temp spilled per load | {spilled / 2**20:,.1f} MiB |")


async def old_reads(conn: asyncpg.Connection, since: Any) -> dict[tuple[uuid.UUID, Any], float]:
    return await store.tokens_charged(conn, since)


async def old_stream_type(conn: asyncpg.Connection, kind: str) -> list[RecordedEvent]:
    cols = "seq, event_id, stream_type, stream_id, version, data::text AS data, recorded_at, causation_id"
    rows = await conn.fetch(f"SELECT {cols} FROM events WHERE stream_type = $1 ORDER BY seq", kind)
    return await store.load_streams(conn, []) + [store._row_to_event(r) for r in rows]


async def old_whole_load(conn: asyncpg.Connection, leader: Leadership) -> None:
    """`Leadership._load` with the reads it made before 0011 (the ledger joined from the log, the
    plan and frontend streams through a parameter): queries and the fold into the state."""
    new_ledger, new_streams = queries.tokens_charged, store.load_stream_type
    queries.tokens_charged, store.load_stream_type = old_reads, old_stream_type  # type: ignore[assignment]  # the old reads, for this load only
    try:
        await leader._load(conn)
    finally:
        queries.tokens_charged, store.load_stream_type = new_ledger, new_streams


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="tessera-recovery-", dir=args.data) as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg").start(preferred_port=None)
        try:
            writer = await asyncpg.connect(pg.url)  # asyncpg's own codecs: COPY needs jsonb's binary one
            conn = await asyncpg.connect(pg.url, server_settings=SERVER_SETTINGS)
            await init_connection(conn)  # as the scheduler's session
            await migrate_before_0011(conn)
            users = await add_users(writer, args.users)
            leader = Leadership(Settings(), nats_url="nats://unused", database_url=pg.url, name="bench")
            sizes = list(range(args.grow or args.jobs, args.jobs + 1, args.grow or args.jobs))
            grown = 0
            for jobs in sizes:
                started = time.perf_counter()
                await add_jobs(writer, users, jobs - grown)
                grown = jobs
                if jobs == sizes[-1]:
                    await add_active(writer, users, args.active)
                await conn.execute("ANALYZE events")
                events = await store.head(conn)
                size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('events'))")
                print(
                    f"\n## {events:,} events ({jobs:,} finished jobs, {size}),"
                    f" written in {time.perf_counter() - started:.0f} s"
                )
                t, whole, spilled = await measure(conn, args.repeat, load_before, lambda: old_whole_load(conn, leader))
                report("before 0011: the leader's reads", t, whole, spilled)
            started = time.perf_counter()
            applied = await apply(conn)
            print(f"\napplied {applied} in {time.perf_counter() - started:.1f} s (its index and the ledger's backfill)")
            t, whole, spilled = await measure(conn, args.repeat, load_after, lambda: leader._load(conn))
            report("after 0011: `Leadership._load`", t, whole, spilled)
            plan = await conn.fetch("EXPLAIN SELECT seq FROM events WHERE stream_type = 'plan' ORDER BY seq")
            print("\nplan of the plan streams' read:", " / ".join(r[0].strip() for r in plan))
            await conn.close()
            await writer.close()
        finally:
            pg.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=250_000, help="finished jobs, four events each")
    parser.add_argument("--grow", type=int, default=0, help="measure 'before' at every multiple of this many jobs")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--active", type=int, default=1000, help="jobs still queued (loaded by every leader)")
    parser.add_argument("--repeat", type=int, default=3, help="loads per measurement; the best is shown")
    parser.add_argument("--data", default=None, help="where the temporary PostgreSQL lives (default: the temp dir)")
    asyncio.run(main(parser.parse_args()))
