"""`tessera projections rebuild` without an outage: it folds into new tables beside the live ones,
reads and key lookups answer while it runs, a stopped rebuild resumes, and `--check` compares."""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter

import asyncpg

from base.db import init_connection
from projector import rebuild
from projector.folds import READ_MODEL_TABLES
from projector.queries import wait_for_projection
from tests.conftest import REPO, Platform


async def _jobs(platform: Platform, key: str, n: int) -> list[str]:
    async with platform.client(key) as client:
        ids = [
            (await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": f"r{i}"}})).json()[
                "job_id"
            ]
            for i in range(n)
        ]
        for job_id in ids:
            await platform.wait_status(client, job_id, {"COMPLETED"})
    return ids


async def _settled(platform: Platform) -> None:
    from base.db import create_pool

    pool = await create_pool(platform.database_url, max_size=1)
    try:
        assert await wait_for_projection(pool, timeout=10)
    finally:
        await pool.close()


async def _connect(platform: Platform) -> asyncpg.Connection:
    conn = await asyncpg.connect(platform.database_url)
    await init_connection(conn)
    return conn


async def _snapshot(conn: asyncpg.Connection) -> dict[str, Counter[str]]:
    return {
        t: Counter(repr(tuple(r.values())) for r in await conn.fetch(f"SELECT * FROM {t}")) for t in READ_MODEL_TABLES
    }


async def _index_names(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' AND tablename = ANY($1::text[])",
        list(READ_MODEL_TABLES),
    )
    return {r["indexname"] for r in rows}


async def test_reads_and_key_lookups_answer_while_a_rebuild_is_paused_midway(platform: Platform) -> None:
    key = await platform.user_key()
    await _jobs(platform, key, 12)
    await _settled(platform)
    conn = await _connect(platform)
    paused, go = asyncio.Event(), asyncio.Event()

    async def pause(position: int) -> None:
        if not paused.is_set():
            paused.set()
            await go.wait()

    try:
        live, indexes = await _snapshot(conn), await _index_names(conn)
        running = asyncio.create_task(rebuild.rebuild(conn, chunk=10, on_chunk=pause))
        await asyncio.wait_for(paused.wait(), 10)
        # Mid-rebuild: a key the gateway has never seen is issued (the projector folds it into the
        # live tables) and used at once; the job list answers from the live read model.
        newcomer = await asyncio.wait_for(platform.user_key(), 10)
        async with platform.client(newcomer) as client:
            listed = await asyncio.wait_for(client.get("/api/v1/jobs"), 2)
            assert listed.status_code == 200 and listed.json()["jobs"] == []
        async with platform.client(key) as client:
            listed = await asyncio.wait_for(client.get("/api/v1/jobs"), 2)
            assert len(listed.json()["jobs"]) == 12
        go.set()
        position = await asyncio.wait_for(running, 30)
        assert position == await conn.fetchval("SELECT seq FROM projection_position")
        assert await _index_names(conn) == indexes  # the new tables carry the old indexes' names
        assert await conn.fetchval("SELECT to_regnamespace('projection_rebuild')") is None
        after = await _snapshot(conn)
        assert after["jobs"] == live["jobs"] and len(after["users"]) == len(live["users"]) + 1
        # The projector goes on folding into the swapped-in tables, from the rebuild's position.
        await _jobs(platform, newcomer, 2)
        async with platform.client(newcomer) as client:
            for _ in range(100):
                if len((await client.get("/api/v1/jobs")).json()["jobs"]) == 2:
                    break
                await asyncio.sleep(0.05)
            assert len((await client.get("/api/v1/jobs")).json()["jobs"]) == 2
        await _settled(platform)
        found = await rebuild.check(conn)
        assert not found.differs, found.samples
        assert await conn.fetchval("SELECT count(*) FROM queue_depth") == 0  # the view reads the new job_queue
    finally:
        go.set()
        await conn.close()


async def test_a_rebuild_stopped_midway_resumes_where_it_was_and_matches_the_log(platform: Platform) -> None:
    key = await platform.user_key()
    await _jobs(platform, key, 10)
    await _settled(platform)
    conn = await _connect(platform)
    reached: list[int] = []

    async def crash_after_two(position: int) -> None:
        reached.append(position)
        if len(reached) == 2:
            raise ConnectionResetError("killed mid-rebuild")

    try:
        live = await _snapshot(conn)
        try:
            await rebuild.rebuild(conn, chunk=8, on_chunk=crash_after_two)
        except ConnectionResetError:
            pass
        stopped_at = await conn.fetchval("SELECT seq FROM projection_rebuild.rebuild_position")
        assert stopped_at == reached[-1] > 0
        resumed: list[int] = []

        async def note(position: int) -> None:
            resumed.append(position)

        await rebuild.rebuild(conn, chunk=8, on_chunk=note)
        assert resumed[0] > stopped_at  # it went on from there, not from the start
        assert await _snapshot(conn) == live
    finally:
        await conn.close()


async def test_check_finds_a_tampered_row_and_exits_non_zero(platform: Platform) -> None:
    key = await platform.user_key()
    ids = await _jobs(platform, key, 4)
    await _settled(platform)
    conn = await _connect(platform)
    try:
        assert not (await rebuild.check(conn, chunk=7)).differs
        await conn.execute("UPDATE jobs SET status = 'FAILED' WHERE id = $1", ids[1])
        found = await rebuild.check(conn, chunk=7)
        assert found.differs and found.only_live["jobs"] == 1 and found.only_rebuilt["jobs"] == 1
        assert sum(found.only_live.values()) == 1
        assert await conn.fetchval("SELECT status FROM jobs WHERE id = $1", ids[1]) == "FAILED"  # nothing swapped
    finally:
        await conn.close()
    env = {**os.environ, "TESSERA_DATABASE_URL": platform.database_url, "TESSERA_NATS_URL": platform.nats_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tessera.cli",
        "projections",
        "rebuild",
        "--check",
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = (await proc.communicate())[0].decode()
    assert proc.returncode == 1, output
    assert "jobs: 1 row(s) only in the live read model, 1 only in the rebuild" in output
    assert "read models differ from a rebuild" in output
