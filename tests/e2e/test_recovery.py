"""A new leader's state comes from bounded, indexed reads: the token ledger the scheduler keeps
with its commits equals the sum over the log, and the streams it loads whole have an index."""

from __future__ import annotations

import asyncio
from datetime import date

import asyncpg
import pytest

from base.db import init_connection
from events import store
from scheduler import queries
from scheduler.leadership import Leadership
from scheduler.service import Scheduler
from tests.conftest import Platform


async def test_the_token_ledger_equals_the_log_and_a_new_leader_loads_it(platform_parts: Platform) -> None:
    scheduler = Scheduler(
        platform_parts.settings, nats_url=platform_parts.nats_url, database_url=platform_parts.database_url
    )
    await platform_parts.start("scheduler", scheduler)
    await asyncio.wait_for(scheduler.is_leader.wait(), 10)
    await platform_parts.start_worker(engines=("echo", "diagnostic-image"))
    for user in range(3):
        async with platform_parts.client(await platform_parts.user_key()) as client:
            ids = []
            for n in range(user + 3):  # priced images of a few sizes, and free echoes
                body = {
                    "capability": "image",
                    "params": {"prompt": f"p{n}", "model": "diagnostic-image", "width": 64 * (1 + n % 4)},
                }
                r = await client.post("/api/v1/jobs", json=body)
                assert r.status_code == 202, r.text
                ids.append(r.json()["job_id"])
                echo = {"capability": "echo", "params": {"prompt": "x"}}
                ids.append((await client.post("/api/v1/jobs", json=echo)).json()["job_id"])
            for job_id in ids:
                await platform_parts.wait_status(client, job_id, {"COMPLETED"})
    conn = await asyncpg.connect(platform_parts.database_url)
    await init_connection(conn)
    try:
        ledger = await queries.tokens_charged(conn, date.min)
        from_log = await store.tokens_charged(conn, date.min)
        assert len(from_log) == 3 and all(tokens > 0 for tokens in from_log.values())
        assert ledger.keys() == from_log.keys()
        for key, tokens in from_log.items():
            assert ledger[key] == pytest.approx(tokens, rel=1e-9)
        state = await Leadership(
            platform_parts.settings, nats_url=platform_parts.nats_url, database_url=platform_parts.database_url
        )._load(conn)
        for key, tokens in from_log.items():
            assert state.quota.ledger[key].used == pytest.approx(tokens, rel=1e-9)
    finally:
        await conn.close()


async def test_the_streams_a_leader_loads_whole_and_the_last_minute_are_found_by_index(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SET enable_seqscan = off")  # an index that can serve the read is then taken
        for kind in ("plan", "frontend", "webhook"):
            plan = await conn.fetch(f"EXPLAIN SELECT seq FROM events WHERE stream_type = '{kind}' ORDER BY seq")
            assert "events_config_streams" in plan[0][0]
        plan = await conn.fetch(
            "EXPLAIN SELECT seq FROM events WHERE type = 'JobSubmitted.v1'"
            " AND recorded_at > statement_timestamp() - make_interval(secs => 60)"
        )
        assert "events_submitted_at" in " ".join(r[0] for r in plan)
        assert [r.data.tier for r in await store.load_stream_type(conn, "plan")][:4] == [  # type: ignore[union-attr]  # plan streams hold PlanDefined
            "free",
            "starter",
            "pro",
            "admin",
        ]
    finally:
        await conn.close()
