"""An engine's server that goes down withdraws its models and sends its jobs back to the queue.

The LLM server runs in a process of its own so the test can SIGKILL it mid-answer, as a crash or
a reboot would, and start it again on the same port.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import asyncpg
import pytest

from scheduler.service import Scheduler
from tessera.embedded import free_port, port_is_free
from tests.conftest import REPO, Platform
from worker_node.engines.llm_http import OpenAIChatEngine
from worker_node.service import Worker

MODEL = "gemma3-270m"


def start_server(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-m", "tests.fake_llm_servers", str(port)], cwd=REPO)
    deadline = time.monotonic() + 20
    while port_is_free(port):
        assert process.poll() is None and time.monotonic() < deadline, "the fake LLM server did not start"
        time.sleep(0.05)
    return process


async def until(condition, timeout: float = 15.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.timeout(90)
async def test_engine_down_withdraws_its_models_requeues_its_job_and_recovers(platform_parts: Platform) -> None:
    scheduler = Scheduler(
        platform_parts.settings, nats_url=platform_parts.nats_url, database_url=platform_parts.database_url
    )
    await platform_parts.start("scheduler", scheduler)
    port = free_port(None)
    server = start_server(port)
    try:
        worker = Worker(
            nats_url=platform_parts.nats_url,
            worker_id="llm",
            heartbeat_interval_s=0.3,
            engines=[OpenAIChatEngine(f"http://127.0.0.1:{port}", {MODEL: "served-model"})],
        )
        await platform_parts.start("worker:llm", worker)
        await asyncio.wait_for(worker.ready.wait(), 10)

        def offered() -> list[str]:
            view = scheduler.state.workers.get("llm") if scheduler.state else None
            return view.status.models if view else []

        await until(lambda: MODEL in offered(), what="the worker's announcement")
        key = await platform_parts.user_key()
        async with platform_parts.client(key) as client:
            job_id = (
                await client.post("/api/v1/jobs", json={"capability": "text", "params": {"prompt": "slow 10"}})
            ).json()["job_id"]
            await until(lambda: bool(worker.running), what="the job to run")
            await asyncio.sleep(0.5)  # mid-answer
            server.kill()
            server.wait()

            await platform_parts.wait_status(client, job_id, {"QUEUED"}, timeout=10)
            await until(lambda: MODEL not in offered(), what="the model to be withdrawn")
            refused = await client.post("/api/v1/jobs", json={"capability": "text", "params": {"prompt": "hi"}})
            assert refused.status_code == 503 and refused.json()["code"] == "NO_CAPABLE_WORKER"
            await asyncio.sleep(1.0)  # while it is down, the queued job is not sent to it again
            assert (await client.get(f"/api/v1/jobs/{job_id}")).json()["status"] == "QUEUED"

            server = start_server(port)
            await until(lambda: MODEL in offered(), what="the model to be offered again")
            done = await platform_parts.wait_status(client, job_id, {"COMPLETED"}, timeout=20)
            assert done["attempt"] == 2 and done["artifacts"][0]["text"].strip().startswith("tick")
    finally:
        server.kill()
        server.wait()
    conn = await asyncpg.connect(platform_parts.database_url)
    try:
        rows = await conn.fetch(
            "SELECT type, data->>'reason' AS reason FROM events WHERE stream_id = $1::uuid ORDER BY version", job_id
        )
    finally:
        await conn.close()
    types = [r["type"] for r in rows]
    assert types.count("JobRequeued.v1") == 1 and types.count("JobCompleted.v1") == 1
    assert "JobFailed.v1" not in types
    reason = next(r["reason"] for r in rows if r["type"] == "JobRequeued.v1")
    assert reason.startswith(("ENGINE_DISCONNECTED", "ENGINE_UNAVAILABLE")), reason
