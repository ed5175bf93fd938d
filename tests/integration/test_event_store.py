"""The event table is append-only, enforced by PostgreSQL itself; appends are version-checked."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from events import store
from events.errors import ConcurrencyError
from events.store import PendingEvent
from events.types import JobQueued, JobSubmitted


def submitted() -> JobSubmitted:
    return JobSubmitted(
        user_id=uuid.uuid4(),
        frontend="api",
        capability="echo",
        model="echo",
        params={"prompt": "x"},
        priority=0,
        cost_tokens=0,
    )


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET type = 'Tampered' WHERE seq = (SELECT min(seq) FROM events)",
        "DELETE FROM events WHERE seq = (SELECT min(seq) FROM events)",
        "TRUNCATE events",
    ],
)
async def test_database_refuses_to_change_events(database_url: str, statement: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        before = await conn.fetch("SELECT seq, type, data::text FROM events ORDER BY seq")
        assert before  # the seed plans
        with pytest.raises(asyncpg.RestrictViolationError, match="events are immutable"):
            await conn.execute(statement)
        assert await conn.fetch("SELECT seq, type, data::text FROM events ORDER BY seq") == before
    finally:
        await conn.close()


async def test_append_with_a_stale_version_is_a_concurrency_error(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    job_id = uuid.uuid4()
    try:
        written = await store.append(
            conn,
            [
                PendingEvent(stream_type="job", stream_id=job_id, version=1, data=submitted()),
                PendingEvent(stream_type="job", stream_id=job_id, version=2, data=JobQueued(priority=0)),
            ],
        )
        assert [r.version for r in written] == [1, 2] and written[0].seq < written[1].seq
        with pytest.raises(ConcurrencyError):  # a second writer that still believes version 1 is current
            await store.append(
                conn, [PendingEvent(stream_type="job", stream_id=job_id, version=2, data=JobQueued(priority=1))]
            )
        loaded = await store.load_stream(conn, job_id)
        assert [(r.version, r.data) for r in loaded] == [(1, written[0].data), (2, JobQueued(priority=0))]
    finally:
        await conn.close()


async def test_migrations_are_idempotent_and_seed_four_plans(database_url: str) -> None:
    from migrations import apply

    conn = await asyncpg.connect(database_url)
    try:
        assert await apply(conn) == []
        plans = await conn.fetch(
            "SELECT data->>'tier' AS tier, version, data->'daily_token_limit' AS daily"
            " FROM events WHERE stream_type = 'plan' ORDER BY seq"
        )
        assert [(p["tier"], p["version"]) for p in plans][:5] == [
            ("free", 1),
            ("starter", 1),
            ("pro", 1),
            ("admin", 1),
            ("admin", 2),
        ]
        assert [p["daily"] for p in plans][:5] == ["20", "120", "300", "999999", "null"]  # 0004: Admin is unlimited
        # 0008: the upload terms, on top of each paid-or-free plan's newest definition.
        assert sorted((p["tier"], p["version"]) for p in plans[5:]) == [("free", 2), ("pro", 2), ("starter", 2)]
        assert sorted(p["daily"] for p in plans[5:]) == ["120", "20", "300"]  # the other terms kept
    finally:
        await conn.close()
