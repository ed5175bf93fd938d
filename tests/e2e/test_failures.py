"""Cancels, crashes and takeovers: no accepted job is lost, none finishes twice."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid

import asyncpg
import httpx
import msgspec
import nats
import pytest

from base.db import init_connection
from projector import rebuild
from projector.folds import READ_MODEL_TABLES
from scheduler.service import Scheduler
from streams import subjects as s
from tests.conftest import Platform


async def event_types(database_url: str, job_id: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT type FROM events WHERE stream_id = $1 ORDER BY version", uuid.UUID(job_id))
    finally:
        await conn.close()
    return [r["type"] for r in rows]


async def test_cancel_while_queued_never_runs(platform_parts: Platform) -> None:
    scheduler = Scheduler(
        platform_parts.settings, nats_url=platform_parts.nats_url, database_url=platform_parts.database_url
    )
    await platform_parts.start("scheduler", scheduler)
    await platform_parts.start_worker("one-slot", engines=("echo",), slots=1)
    key = await platform_parts.user_key()
    async with platform_parts.client(key) as client:
        busy = (
            await client.post(
                "/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "hold the slot", "delay_seconds": 2}}
            )
        ).json()["job_id"]
        job_id = (await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "wait"}})).json()[
            "job_id"
        ]
        assert (await client.get(f"/api/v1/jobs/{job_id}")).json()["status"] == "QUEUED"
        cancelled = await client.delete(f"/api/v1/jobs/{job_id}")
        assert cancelled.status_code == 202 and cancelled.json()["status"] == "CANCELLED"
        await platform_parts.wait_status(client, busy, {"COMPLETED"})  # the slot is free again
        await asyncio.sleep(0.5)
        job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        assert job["status"] == "CANCELLED" and job["artifacts"] == [] and job["worker_id"] is None
        again = await client.delete(f"/api/v1/jobs/{job_id}")
        assert again.status_code == 409 and again.json()["code"] == "JOB_TERMINAL"
    assert await event_types(platform_parts.database_url, job_id) == [
        "JobSubmitted.v1",
        "JobQueued.v1",
        "JobCancelled.v1",
    ]


async def test_cancel_while_running_interrupts_the_worker_and_delivers_nothing(platform: Platform) -> None:
    worker = platform.tasks["worker:w1"][0]
    key = await platform.user_key()
    async with platform.client(key) as client:
        r = await client.post(
            "/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "slow", "delay_seconds": 20}}
        )
        job_id = r.json()["job_id"]
        await platform.wait_status(client, job_id, {"RUNNING"})
        for _ in range(100):
            if uuid.UUID(job_id) in worker.running:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.05)
        cancelled = await client.delete(f"/api/v1/jobs/{job_id}")
        assert cancelled.status_code == 202
        for _ in range(100):  # the engine is interrupted within seconds, not after its 20 s
            if uuid.UUID(job_id) not in worker.running:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.05)
        assert uuid.UUID(job_id) not in worker.running  # type: ignore[attr-defined]
        job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        assert job["status"] == "CANCELLED" and job["artifacts"] == []
        # The slot is free again: the next job runs at once.
        nxt = (await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "next"}})).json()
        await platform.wait_status(client, nxt["job_id"], {"COMPLETED"}, timeout=10)
    types = await event_types(platform.database_url, job_id)
    assert types[-1] == "JobCancelled.v1" and "JobCompleted.v1" not in types


async def _submit_with_retries(client: httpx.AsyncClient, n: int) -> str:
    """Submit until accepted, reusing the Idempotency-Key: a retry can never make a second job."""
    for _ in range(60):
        try:
            r = await client.post(
                "/api/v1/jobs",
                json={"capability": "echo", "params": {"prompt": f"job {n}"}},
                headers={"Idempotency-Key": f"job-{n}"},
            )
        except httpx.HTTPError:
            await asyncio.sleep(0.2)
            continue
        if r.status_code == 202:
            return r.json()["job_id"]
        assert r.status_code == 503, r.text
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {n} was never accepted")


async def test_scheduler_killed_mid_stream_loses_and_duplicates_nothing(platform_parts: Platform) -> None:
    await platform_parts.start_worker()
    first = platform_parts.subprocess("scheduler")
    key = await platform_parts.user_key(plan="admin")  # needs a live scheduler; no plan limits in the way
    accepted: dict[int, str] = {}
    async with platform_parts.client(key) as client:

        async def producer(start: int) -> None:
            for n in range(start, start + 40):
                accepted[n] = await _submit_with_retries(client, n)

        producers = [asyncio.create_task(producer(i * 40)) for i in range(4)]
        while len(accepted) < 30:
            await asyncio.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait()
        await asyncio.sleep(1.0)
        second = platform_parts.subprocess("scheduler")
        try:
            await asyncio.wait_for(asyncio.gather(*producers), 120)
            for job_id in accepted.values():
                await platform_parts.wait_status(client, job_id, {"COMPLETED"}, timeout=60)
        finally:
            second.terminate()
            second.wait(20)
    assert len(set(accepted.values())) == 160
    conn = await asyncpg.connect(platform_parts.database_url)
    try:
        rows = await conn.fetch(
            "SELECT stream_id, count(*) FILTER (WHERE type = 'JobSubmitted.v1') AS submitted,"
            " count(*) FILTER (WHERE type = 'JobCompleted.v1') AS completed"
            " FROM events WHERE stream_type = 'job' GROUP BY stream_id"
        )
    finally:
        await conn.close()
    assert len(rows) == 160
    assert all(r["submitted"] == 1 and r["completed"] == 1 for r in rows)


async def test_standby_scheduler_takes_over_when_the_leader_dies(platform_parts: Platform) -> None:
    await platform_parts.start_worker()
    leader = platform_parts.subprocess("scheduler")
    key = await platform_parts.user_key()  # answered by the first scheduler, which is the leader
    standby = platform_parts.subprocess("scheduler")
    try:
        conn = await asyncpg.connect(platform_parts.database_url)
        try:
            holders = await conn.fetch(
                "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                " WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE 'scheduler-%'"
            )
            assert len(holders) == 1
        finally:
            await conn.close()
        leader.send_signal(signal.SIGKILL)
        leader.wait()
        async with platform_parts.client(key) as client:
            job_id = await _submit_with_retries(client, 1)
            done = await platform_parts.wait_status(client, job_id, {"COMPLETED"}, timeout=30)
            assert done["artifacts"][0]["text"] == "job 1"
    finally:
        standby.terminate()
        standby.wait(20)
        if leader.poll() is None:
            leader.kill()


async def snapshot(conn: asyncpg.Connection) -> dict[str, list]:
    out = {}
    for table in READ_MODEL_TABLES:
        rows = await conn.fetch(f"SELECT * FROM {table}")
        out[table] = sorted((tuple(r.values()) for r in rows), key=repr)
    return out


async def test_rebuilt_read_models_equal_the_live_ones(platform: Platform) -> None:
    keys = [await platform.user_key(), await platform.user_key(plan="free")]
    fkey = await platform.frontend_key("discord", "dc-1")
    ids = []
    async with platform.client(keys[0]) as a, platform.client(keys[1]) as b, platform.client(fkey) as f:
        for n in range(6):
            ids.append(
                (
                    a,
                    (await a.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": f"a{n}"}})).json()[
                        "job_id"
                    ],
                )
            )
        ids.append(
            (
                b,
                (await b.post("/api/v1/jobs", json={"capability": "tts", "params": {"prompt": "hi there"}})).json()[
                    "job_id"
                ],
            )
        )
        failing = (
            await b.post("/api/v1/jobs", json={"capability": "tts", "params": {"prompt": "x", "speed": 5}})
        ).json()["job_id"]
        slow = (
            await a.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "s", "delay_seconds": 10}})
        ).json()["job_id"]
        ids.append(
            (
                f,
                (
                    await f.post(
                        "/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "d"}, "user_ref": "discord:77"}
                    )
                ).json()["job_id"],
            )
        )
        await platform.wait_status(a, slow, {"RUNNING"})
        await a.delete(f"/api/v1/jobs/{slow}")
        await platform.wait_status(b, failing, {"FAILED"})
        for client, job_id in ids:
            headers = {"Tessera-User-Ref": "discord:77"} if client is f else {}
            client.headers.update(headers)
            await platform.wait_status(client, job_id, {"COMPLETED"})
        failed = (await b.get(f"/api/v1/jobs/{failing}")).json()
        assert failed["error"]["code"] == "INVALID_PARAMS"
    from base.db import create_pool
    from projector.queries import wait_for_projection

    pool = await create_pool(platform.database_url, max_size=2)
    assert await wait_for_projection(pool, timeout=10)
    await pool.close()
    await platform.stop("projector")
    conn = await asyncpg.connect(platform.database_url)
    await init_connection(conn)
    try:
        live = await snapshot(conn)
        assert len(live["jobs"]) == 10 and live["usage_daily"] and live["artifacts"]
        await rebuild.rebuild(conn)
        rebuilt = await snapshot(conn)
    finally:
        await conn.close()
    assert rebuilt == live


@pytest.mark.timeout(90)
async def test_worker_killed_mid_job_is_requeued_and_completes_once(platform_parts: Platform) -> None:
    scheduler = Scheduler(
        platform_parts.settings, nats_url=platform_parts.nats_url, database_url=platform_parts.database_url
    )
    await platform_parts.start("scheduler", scheduler)
    doomed = platform_parts.subprocess("worker", "--worker-id", "doomed", "--engines", "echo")
    key = await platform_parts.user_key()
    async with platform_parts.client(key) as client:
        await asyncio.sleep(1.5)  # the worker announces itself
        job_id = (
            await client.post(
                "/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "survive", "delay_seconds": 3}}
            )
        ).json()["job_id"]
        running = await platform_parts.wait_status(client, job_id, {"RUNNING"})
        assert running["worker_id"] == "doomed"
        for _ in range(100):
            if (await client.get(f"/api/v1/jobs/{job_id}")).json()["started_at"]:
                break
            await asyncio.sleep(0.05)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        await platform_parts.start_worker("rescuer", engines=("echo",))
        done = await platform_parts.wait_status(client, job_id, {"COMPLETED"}, timeout=30)
        assert done["worker_id"] == "rescuer" and done["attempt"] == 2
    types = await event_types(platform_parts.database_url, job_id)
    assert "JobRequeued.v1" in types and types.count("JobCompleted.v1") == 1


@pytest.mark.timeout(90)
async def test_a_paused_worker_cannot_complete_its_lost_job_a_second_time(platform_parts: Platform) -> None:
    """SIGSTOP a worker mid-job past the heartbeat timeout: its attempt is declared lost and the job
    runs again elsewhere. Resumed, the old worker reports its result, and the scheduler refuses it."""
    scheduler = Scheduler(
        platform_parts.settings, nats_url=platform_parts.nats_url, database_url=platform_parts.database_url
    )
    await platform_parts.start("scheduler", scheduler)
    sleeper = platform_parts.subprocess("worker", "--worker-id", "sleeper", "--engines", "echo")
    key = await platform_parts.user_key()
    try:
        async with platform_parts.client(key) as client:
            await asyncio.sleep(1.5)  # the worker announces itself
            job_id = (
                await client.post(
                    "/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "twice?", "delay_seconds": 2}}
                )
            ).json()["job_id"]
            running = await platform_parts.wait_status(client, job_id, {"RUNNING"})
            assert running["worker_id"] == "sleeper"
            await asyncio.sleep(0.5)  # it has started the engine
            sleeper.send_signal(signal.SIGSTOP)
            await platform_parts.start_worker("awake", engines=("echo",))
            done = await platform_parts.wait_status(client, job_id, {"COMPLETED"}, timeout=30)
            assert done["worker_id"] == "awake" and done["attempt"] == 2
            sleeper.send_signal(signal.SIGCONT)  # its delay is over: it reports attempt 1 as completed
            await asyncio.sleep(3.0)
            again = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        assert again["status"] == "COMPLETED" and again["worker_id"] == "awake" and again["attempt"] == 2
    finally:
        sleeper.send_signal(signal.SIGCONT)
        sleeper.terminate()
        sleeper.wait(20)
    types = await event_types(platform_parts.database_url, job_id)
    assert types.count("JobCompleted.v1") == 1 and "JobRequeued.v1" in types
    # The late result was sent, and refused: the commands stream holds it.
    nc = await nats.connect(platform_parts.nats_url)
    try:
        sub = await nc.jetstream().subscribe(f"{s.CMD_COMPLETED}.>", ordered_consumer=True)
        reports = []
        with contextlib.suppress(TimeoutError):
            while True:
                reports.append(msgspec.json.decode((await sub.next_msg(timeout=1)).data))
    finally:
        await nc.close()
    assert {(r["worker_id"], r["attempt"]) for r in reports if r["job_id"] == job_id} == {("sleeper", 1), ("awake", 2)}


@pytest.mark.timeout(60)
async def test_sigterm_drains_the_worker(platform_parts: Platform) -> None:
    """SIGTERM: the worker finishes the job it runs, takes no new one, and says goodbye."""
    await platform_parts.start(
        "scheduler",
        Scheduler(platform_parts.settings, nats_url=platform_parts.nats_url, database_url=platform_parts.database_url),
    )
    leaving = platform_parts.subprocess("worker", "--worker-id", "leaving", "--engines", "echo", "--slots", "1")
    key = await platform_parts.user_key()
    async with platform_parts.client(key) as client:
        await asyncio.sleep(1.5)  # the worker announces itself
        first = (
            await client.post(
                "/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "finish me", "delay_seconds": 2}}
            )
        ).json()["job_id"]
        await platform_parts.wait_status(client, first, {"RUNNING"})
        await asyncio.sleep(0.5)
        leaving.send_signal(signal.SIGTERM)
        second = (
            await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "not you"}})
        ).json()["job_id"]
        done = await platform_parts.wait_status(client, first, {"COMPLETED"})
        assert done["worker_id"] == "leaving" and done["attempt"] == 1  # finished, not re-queued
        assert leaving.wait(20) == 0
        await platform_parts.start_worker("staying", engines=("echo",))
        later = await platform_parts.wait_status(client, second, {"COMPLETED"})
        assert later["worker_id"] == "staying"  # the drained worker took no new job
    nc = await nats.connect(platform_parts.nats_url)
    try:
        kv = await nc.jetstream().key_value(s.WORKERS_BUCKET)
        with pytest.raises(nats.js.errors.KeyNotFoundError):  # it said goodbye
            await kv.get("leaving")
    finally:
        await nc.close()
