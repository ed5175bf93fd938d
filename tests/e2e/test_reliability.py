"""Accepted jobs are never stranded: lost dispatches, worker restarts and NATS restarts.

Each test makes its race happen on purpose rather than waiting for it: the restarted worker reads
its subject only after the scheduler has re-dispatched its jobs; a worker drops a dispatch as if
the message were lost; the nats-server is killed and started again between heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import nats
import pytest

from scheduler.service import Scheduler
from streams import subjects as s
from streams import topology
from streams.messages import Dispatch, encode
from tessera.embedded import EmbeddedNats
from tests.conftest import Platform, gateway_and_projector
from tests.scripted_worker import ScriptedWorker
from worker_node.engines import build
from worker_node.service import Worker


async def histories(database_url: str, job_ids: list[str]) -> dict[str, list[tuple[str, dict]]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT stream_id, type, data FROM events WHERE stream_id = ANY($1::uuid[]) ORDER BY seq",
            [uuid.UUID(j) for j in job_ids],
        )
    finally:
        await conn.close()
    out: dict[str, list[tuple[str, dict]]] = {j: [] for j in job_ids}
    for r in rows:
        data = r["data"] if isinstance(r["data"], dict) else json.loads(r["data"])
        out[str(r["stream_id"])].append((r["type"], data))
    return out


async def start_scheduler(platform: Platform) -> Scheduler:
    scheduler = Scheduler(platform.settings, nats_url=platform.nats_url, database_url=platform.database_url)
    await platform.start("scheduler", scheduler)
    await asyncio.wait_for(scheduler.is_leader.wait(), 10)
    return scheduler


@pytest.mark.timeout(60)
async def test_a_worker_restarted_while_its_jobs_are_re_dispatched_gets_them(platform_parts: Platform) -> None:
    """The restarted worker's new life is announced; the scheduler requeues its old attempts and
    re-dispatches them to it in the same batch. Only then does the worker start reading. Purging
    its subject after those dispatches (the old order) deleted them: the jobs stayed RUNNING."""
    await start_scheduler(platform_parts)
    first = await ScriptedWorker(platform_parts.nats_url, "racer", ["echo"], slots=4).start()
    key = await platform_parts.user_key()
    async with platform_parts.client(key) as client:
        ids = [
            (await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": f"j{n}"}})).json()[
                "job_id"
            ]
            for n in range(4)
        ]
        assert len(await first.wait_for(4)) == 4
        await first.crash()
        second = await ScriptedWorker(platform_parts.nats_url, "racer", ["echo"], slots=4).start(consume=False)
        deadline = time.monotonic() + 10
        while True:  # attempt 2 of every job is committed, and sent
            jobs = [(await client.get(f"/api/v1/jobs/{j}")).json() for j in ids]
            if all(j["attempt"] == 2 and j["status"] == "RUNNING" for j in jobs):
                break
            assert time.monotonic() < deadline, jobs
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the outbox has done whatever it does after sending them
        second.consume()
        dispatches = await second.wait_for(4, timeout=10)
        assert sorted((str(d.job_id), d.attempt) for d in dispatches) == sorted((j, 2) for j in ids)
        assert {d.instance_id for d in dispatches} == {second.instance_id}
        for dispatch in dispatches:
            await second.finish(dispatch)
        for job_id in ids:
            done = await platform_parts.wait_status(client, job_id, {"COMPLETED"})
            assert done["attempt"] == 2
        await second.stop()


class LossyWorker(Worker):
    """A real worker whose first dispatch never arrives, as if the message were lost."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.dropped: list[Dispatch] = []

    def _start(self, dispatch: Dispatch) -> None:
        if not self.dropped:
            self.dropped.append(dispatch)
            return
        super()._start(dispatch)


@pytest.mark.timeout(60)
async def test_a_lost_dispatch_is_requeued_by_reconciliation(platform_parts: Platform) -> None:
    await start_scheduler(platform_parts)
    worker = LossyWorker(
        nats_url=platform_parts.nats_url, worker_id="lossy", engines=[build("echo")], heartbeat_interval_s=0.3
    )
    await platform_parts.start("worker:lossy", worker)
    await asyncio.wait_for(worker.ready.wait(), 10)
    key = await platform_parts.user_key()
    async with platform_parts.client(key) as client:
        job_id = (await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "lost"}})).json()[
            "job_id"
        ]
        done = await platform_parts.wait_status(client, job_id, {"COMPLETED"}, timeout=20)
    assert [d.job_id for d in worker.dropped] == [uuid.UUID(job_id)]
    assert done["attempt"] == 2 and done["worker_id"] == "lossy"  # the worker was never declared lost
    events = (await histories(platform_parts.database_url, [job_id]))[job_id]
    requeued = [data for kind, data in events if kind == "JobRequeued.v1"]
    assert len(requeued) == 1 and "never ran attempt 1" in requeued[0]["reason"]
    assert [kind for kind, _ in events].count("JobCompleted.v1") == 1


@pytest.mark.timeout(60)
async def test_a_dispatch_meant_for_a_previous_instance_is_dropped(platform: Platform) -> None:
    worker: Worker = platform.tasks["worker:w1"][0]  # type: ignore[assignment]
    stale = Dispatch(
        job_id=uuid.uuid4(),
        attempt=1,
        capability="echo",
        model="echo",
        params={"prompt": "old"},
        timeout_seconds=10,
        dispatched_at=datetime.now(UTC),
        instance_id=uuid.uuid4(),
    )
    fresh = Dispatch(
        job_id=uuid.uuid4(),
        attempt=1,
        capability="echo",
        model="echo",
        params={"prompt": "new", "delay_seconds": 3},
        timeout_seconds=10,
        dispatched_at=datetime.now(UTC),
        instance_id=worker.instance_id,
    )
    nc = await nats.connect(platform.nats_url)
    try:
        for dispatch in (stale, fresh):
            await nc.jetstream().publish(s.dispatch("w1"), encode(dispatch))
    finally:
        await nc.close()
    for _ in range(100):
        if fresh.job_id in worker.running:
            break
        await asyncio.sleep(0.05)
    assert fresh.job_id in worker.running and stale.job_id not in worker.running


@contextlib.asynccontextmanager
async def own_nats(base: Path) -> AsyncIterator[EmbeddedNats]:
    server = EmbeddedNats(base / "nats").start(preferred_port=None)
    try:
        nc = await nats.connect(server.url)
        await topology.ensure(nc.jetstream())
        await nc.close()
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(120)
async def test_a_nats_restart_declares_no_worker_lost(tmp_path: Path, database_url: str) -> None:
    """nats-server is killed mid-load and started again 2 s later on the same port and store.
    Every service reconnects: no worker is declared lost, no job fails, and once every service is
    back on NATS every submit is accepted (no 503 beyond the outage itself)."""
    async with own_nats(tmp_path) as server, gateway_and_projector(server.url, database_url) as platform:
        scheduler = await start_scheduler(platform)
        await platform.start_worker("steady", engines=("echo",))
        key = await platform.user_key(plan="admin")
        outcomes: list[tuple[float, int, str | None]] = []  # (when, status, code)
        accepted: list[str] = []
        stop = asyncio.Event()

        async def load(client) -> None:  # type: ignore[no-untyped-def]
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    r = await client.post(
                        "/api/v1/jobs",
                        json={"capability": "echo", "params": {"prompt": f"n{n}", "delay_seconds": 0.2}},
                        headers={"Idempotency-Key": f"load-{n}"},
                    )
                    outcomes.append((time.monotonic(), r.status_code, r.json().get("code")))
                    if r.status_code == 202:
                        accepted.append(r.json()["job_id"])
                except Exception as exc:  # the gateway's own answer may fail while NATS is down
                    outcomes.append((time.monotonic(), 0, type(exc).__name__))
                await asyncio.sleep(0.05)

        async with platform.client(key) as client:
            loader = asyncio.create_task(load(client))
            await asyncio.sleep(2.0)
            assert server.process is not None
            server.process.kill()  # SIGKILL: no goodbye to anyone
            server.process.wait()
            await asyncio.sleep(2.0)
            server.start(preferred_port=server.port)
            back = time.monotonic()
            await asyncio.sleep(max(8.0, 3 * platform.settings.worker_timeout_s))  # long past any worker timeout
            stop.set()
            await loader
            for job_id in accepted:
                await platform.wait_status(client, job_id, {"COMPLETED"}, timeout=30)

        assert scheduler.state is not None and "steady" in scheduler.state.workers
        # The fleet was alive throughout: never "no capable worker"; and once every service has had
        # time to reconnect (0.5 s apart, on a loaded machine), every submit is accepted.
        assert not [o for o in outcomes if o[2] == "NO_CAPABLE_WORKER"], outcomes
        late = [o for o in outcomes if o[0] > back + 5 and o[1] != 202]
        assert not late, late
        assert len([o for o in outcomes if o[0] > back + 5]) > 10
        events = await histories(platform.database_url, accepted)
        kinds = [kind for history in events.values() for kind, _ in history]
        assert "JobFailed.v1" not in kinds and kinds.count("JobCompleted.v1") == len(accepted)
        # A dispatch in flight when the server died is requeued by reconciliation (the worker never
        # held it); no attempt is ever lost with its worker.
        reasons = [data["reason"] for history in events.values() for kind, data in history if kind == "JobRequeued.v1"]
        assert all("never ran attempt" in reason for reason in reasons), reasons


@pytest.mark.timeout(60)
async def test_a_newer_attempt_of_a_job_replaces_the_older_one_on_the_worker(platform: Platform) -> None:
    """Attempt 1 reached the worker late, after the scheduler had requeued it and sent attempt 2:
    the worker stops attempt 1 and tracks attempt 2, whose end does not leave attempt 1's entry
    behind (or the other way round)."""
    worker: Worker = platform.tasks["worker:w1"][0]  # type: ignore[assignment]
    job_id = uuid.uuid4()

    def dispatch(attempt: int, delay: float) -> Dispatch:
        return Dispatch(
            job_id=job_id,
            attempt=attempt,
            capability="echo",
            model="echo",
            params={"prompt": "x", "delay_seconds": delay},
            timeout_seconds=10,
            dispatched_at=datetime.now(UTC),
            instance_id=worker.instance_id,
        )

    nc = await nats.connect(platform.nats_url)
    try:
        await nc.jetstream().publish(s.dispatch("w1"), encode(dispatch(1, 5)))
        for _ in range(100):
            if job_id in worker.running:
                break
            await asyncio.sleep(0.05)
        first = worker.running[job_id][1]
        await nc.jetstream().publish(s.dispatch("w1"), encode(dispatch(2, 0.5)))
        await nc.jetstream().publish(s.dispatch("w1"), encode(dispatch(1, 5)))  # older again: ignored
        for _ in range(100):
            if worker.running.get(job_id, (0,))[0] == 2:
                break
            await asyncio.sleep(0.05)
        assert worker.running[job_id][0] == 2
        await asyncio.sleep(0.2)
        assert first.done()  # attempt 1 was stopped
        for _ in range(100):
            if job_id not in worker.running:
                break
            await asyncio.sleep(0.05)
        assert job_id not in worker.running  # attempt 2 finished and let go
    finally:
        await nc.close()


class FlakyStoreWorker(Worker):
    """A real worker whose object store times out twice, as during a NATS restart."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.store_failures = 0
        store = self.jobs._store  # the job runner stores a finished job's outputs

        async def flaky_store(job, output):  # type: ignore[no-untyped-def]
            if self.store_failures < 2:
                self.store_failures += 1
                raise nats.errors.TimeoutError
            return await store(job, output)

        self.jobs._store = flaky_store  # type: ignore[method-assign]


@pytest.mark.timeout(60)
async def test_a_result_waits_out_an_object_store_outage_rather_than_failing(platform_parts: Platform) -> None:
    """Storing the artifacts once failed the job as ENGINE_TIMEOUT when NATS was away: the engine's
    work is done, so the worker waits for the store and the job completes, on its first attempt."""
    await start_scheduler(platform_parts)
    worker = FlakyStoreWorker(
        nats_url=platform_parts.nats_url, worker_id="flaky", engines=[build("echo")], heartbeat_interval_s=0.3
    )
    await platform_parts.start("worker:flaky", worker)
    await asyncio.wait_for(worker.ready.wait(), 10)
    key = await platform_parts.user_key()
    async with platform_parts.client(key) as client:
        job_id = (await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "kept"}})).json()[
            "job_id"
        ]
        done = await platform_parts.wait_status(client, job_id, {"COMPLETED", "FAILED"}, timeout=20)
    assert done["status"] == "COMPLETED" and done["attempt"] == 1, done
    assert worker.store_failures == 2 and done["artifacts"][0]["text"] == "kept"


@pytest.mark.timeout(60)
async def test_a_stalled_scheduler_does_not_declare_the_workers_it_did_not_hear_lost(platform_parts: Platform) -> None:
    """The whole process stops for longer than the worker timeout (as a starved CI machine made it do):
    no heartbeat is sent or read meanwhile. When it runs again, the scheduler must not judge the
    worker by the silence it caused itself; the job keeps its first attempt on its worker."""
    platform = platform_parts
    await start_scheduler(platform)
    worker = await ScriptedWorker(platform.nats_url, "w-held", ["echo"], loaded=["echo"]).start()
    try:
        key = await platform.user_key()
        async with platform.client(key) as client:
            request = {"capability": "echo", "params": {"prompt": "hold", "model": "echo"}}
            job_id = (await client.post("/api/v1/jobs", json=request)).json()["job_id"]
            [dispatch] = await worker.wait_for(1)
            assert str(dispatch.job_id) == job_id
            time.sleep(platform.settings.worker_timeout_s + 1.0)  # the stall, on purpose: the loop stops
            await asyncio.sleep(3 * platform.settings.worker_timeout_s / 2)  # judged by now, were it to be
            body = (await client.get(f"/api/v1/jobs/{job_id}")).json()
            assert body["status"] == "RUNNING" and body["attempt"] == 1 and body["worker_id"] == "w-held", body
            await worker.finish(dispatch)
            await platform.wait_status(client, job_id, {"COMPLETED"})
    finally:
        await worker.stop()
    kinds = [kind for kind, _ in (await histories(platform.database_url, [job_id]))[job_id]]
    assert "JobRequeued.v1" not in kinds and kinds.count("JobCompleted.v1") == 1, kinds
