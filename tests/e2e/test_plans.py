"""Plans over HTTP: every admission rule's error, rate-limit headers, the quota's life in /user/me,
queue timeouts with their refund, and operators changing plans and moving users."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pytest

from scheduler.service import Scheduler
from streams.messages import DefinePlan
from tessera.admin import change_user_plan, define_plan, plan_history
from tests.conftest import Platform
from tests.conftest import test_settings as settings_for_tests
from tests.scripted_worker import ScriptedWorker


@pytest.fixture
async def gpu_platform(platform_parts: Platform) -> AsyncIterator[tuple[Platform, ScriptedWorker]]:
    """Gateway, projector and scheduler, with one scripted GPU worker (sdxl and flux-dev, 1536 px)."""
    scheduler = Scheduler(
        settings_for_tests(queue_timeout_s=3.0),
        nats_url=platform_parts.nats_url,
        database_url=platform_parts.database_url,
    )
    await platform_parts.start("scheduler", scheduler)
    await asyncio.wait_for(scheduler.is_leader.wait(), 10)
    worker = await ScriptedWorker(
        platform_parts.nats_url, "gpu0", ["sdxl", "flux-dev"], slots=1, max_resolution=1536
    ).start()
    for _ in range(200):
        if scheduler.state and "gpu0" in scheduler.state.workers and scheduler.state.fleet_known:
            break
        await asyncio.sleep(0.02)
    try:
        yield platform_parts, worker
    finally:
        await worker.stop()


async def test_each_admission_rule_has_its_error(gpu_platform: tuple[Platform, ScriptedWorker]) -> None:
    platform, _ = gpu_platform
    free, starter, pro = (
        await platform.user_key(plan="free"),
        await platform.user_key(plan="starter"),
        await platform.user_key(plan="pro"),
    )
    async with platform.client(free) as f, platform.client(starter) as st, platform.client(pro) as p:
        # The free plan runs 1 job and lets 3 wait: the worker takes the first, three wait, the fifth is refused.
        for _ in range(4):
            r = await f.post("/api/v1/jobs", json={"capability": "image", "params": {"prompt": "x"}})
            assert r.status_code == 202, r.text
        r = await f.post("/api/v1/jobs", json={"capability": "image", "params": {"prompt": "x"}})
        assert r.status_code == 429 and r.json()["code"] == "TOO_MANY_QUEUED_JOBS" and "Retry-After" in r.headers
        r = await f.post("/api/v1/jobs", json={"capability": "image", "params": {"prompt": "x", "model": "flux-dev"}})
        assert r.status_code == 403 and r.json()["code"] == "MODEL_NOT_ALLOWED"
        assert "Free" in r.json()["detail"] and r.headers["RateLimit-Limit"] == "6"
        # Six requests in the minute so far: the seventh is rate limited, with the headers to back off.
        r = await f.post("/api/v1/jobs", json={"capability": "image", "params": {"prompt": "x"}})
        assert r.status_code == 429 and r.json()["code"] == "RATE_LIMITED"
        assert r.headers["RateLimit-Remaining"] == "0" and 0 < int(r.headers["Retry-After"]) <= 60
        r = await st.post("/api/v1/jobs", json={"capability": "image", "params": {"prompt": "x", "width": 2048}})
        assert r.status_code == 403 and r.json()["code"] == "RESOLUTION_TOO_HIGH"
        r = await p.post("/api/v1/jobs", json={"capability": "image", "params": {"prompt": "x", "width": 2048}})
        assert r.status_code == 503 and r.json()["code"] == "NO_CAPABLE_WORKER"  # pro may; no worker can
        r = await p.post("/api/v1/jobs", json={"capability": "video", "params": {"prompt": "x"}})
        assert r.status_code == 403 and r.json()["code"] == "MODEL_NOT_ALLOWED"  # video is sold separately


async def test_the_quota_is_reserved_charged_and_shown(gpu_platform: tuple[Platform, ScriptedWorker]) -> None:
    platform, worker = gpu_platform
    key = await platform.user_key(plan="starter")  # 120 tokens a day
    async with platform.client(key) as client:
        me = (await client.get("/api/v1/user/me")).json()
        assert me["limits"]["daily_tokens"] == 120 and me["today"]["tokens_remaining"] == 120
        first = await client.post(
            "/api/v1/jobs", json={"capability": "image", "params": {"prompt": "x", "batch_size": 4}}
        )  # 4 tokens, dispatched at once
        assert first.status_code == 202 and first.json()["cost_tokens"] == 4.0
        assert first.headers["RateLimit-Remaining"] == "19"
        waiting = await client.post("/api/v1/jobs", json={"capability": "image", "params": {"prompt": "x"}})
        assert waiting.json()["queue_position"] == 0 and waiting.json()["estimated_time_seconds"] > 0
        async with client.stream("GET", f"/api/v1/jobs/{waiting.json()['job_id']}/stream") as stream:
            lines = stream.aiter_lines()
            async for line in lines:
                if line == "event: status":
                    status = json.loads((await anext(lines)).removeprefix("data: "))
                    break
        assert status["status"] == "QUEUED" and status["queue_position"] == 0
        assert status["estimated_time_seconds"] > 0
        await asyncio.sleep(0.3)
        me = (await client.get("/api/v1/user/me")).json()
        assert me["today"]["tokens_reserved"] == 5.0 and me["today"]["tokens_remaining"] == 115.0
        assert me["jobs_running"] == 1 and me["jobs_queued"] == 1
        dispatch = (await worker.wait_for(1))[0]
        await worker.finish(dispatch)
        await platform.wait_status(client, first.json()["job_id"], {"COMPLETED"})
        cancelled = await client.delete(f"/api/v1/jobs/{waiting.json()['job_id']}")
        assert cancelled.status_code == 202
        await asyncio.sleep(0.3)
        me = (await client.get("/api/v1/user/me")).json()
        assert me["today"]["tokens_used"] == 4.0 and me["today"]["tokens_reserved"] == 0
        assert me["today"]["tokens_remaining"] == 116.0 and me["today"]["tokens_by_capability"]["image"] == 4.0
        # A job that would go past the quota is refused, saying when the quota resets.
        await define_plan(
            platform.nats_url,
            platform.database_url,
            DefinePlan(command_id=uuid.uuid4(), tier="starter", daily_token_limit=6),
        )
        r = await client.post("/api/v1/jobs", json={"capability": "image", "params": {"prompt": "x", "batch_size": 3}})
        assert r.status_code == 429 and r.json()["code"] == "QUOTA_EXCEEDED"
        assert me["today"]["resets_at"][:10] in r.json()["detail"] and int(r.headers["Retry-After"]) > 0


async def test_a_job_that_waits_too_long_fails_and_is_refunded(gpu_platform: tuple[Platform, ScriptedWorker]) -> None:
    platform, worker = gpu_platform
    key = await platform.user_key(plan="pro")
    async with platform.client(key) as client:
        busy = (await client.post("/api/v1/jobs", json={"capability": "image", "params": {"prompt": "x"}})).json()
        stuck = (await client.post("/api/v1/jobs", json={"capability": "image", "params": {"prompt": "y"}})).json()
        failed = await platform.wait_status(client, stuck["job_id"], {"FAILED"}, timeout=15)
        assert failed["error"]["code"] == "QUEUE_TIMEOUT"
        await worker.finish((await worker.wait_for(1))[0])
        await platform.wait_status(client, busy["job_id"], {"COMPLETED"})
        await asyncio.sleep(0.3)
        me = (await client.get("/api/v1/user/me")).json()
        assert me["today"]["tokens_used"] == 1.0 and me["today"]["tokens_reserved"] == 0
        assert me["today"]["jobs_failed"] == 1 and me["today"]["jobs_completed"] == 1
        events = (await client.get(f"/api/v1/jobs/{stuck['job_id']}/events")).json()
        assert events[-1]["type"] == "JobFailed.v1" and events[-1]["data"]["released_tokens"] == 1.0


async def test_operators_change_plans_and_move_users(gpu_platform: tuple[Platform, ScriptedWorker]) -> None:
    platform, _ = gpu_platform
    key = await platform.user_key(user_id="carol", plan="free")
    async with platform.client(key) as client:
        r = await client.post(
            "/api/v1/jobs", json={"capability": "image", "params": {"prompt": "x", "model": "flux-dev"}}
        )
        assert r.json()["code"] == "MODEL_NOT_ALLOWED"
        await change_user_plan(platform.nats_url, platform.database_url, platform="web", user_id="carol", plan="pro")
        r = await client.post(
            "/api/v1/jobs", json={"capability": "image", "params": {"prompt": "x", "model": "flux-dev"}}
        )
        assert r.status_code == 202 and r.json()["cost_tokens"] == 2.0
        me = (await client.get("/api/v1/user/me")).json()
        assert me["plan"]["tier"] == "pro"
    await define_plan(
        platform.nats_url,
        platform.database_url,
        DefinePlan(command_id=uuid.uuid4(), tier="free", daily_token_limit=25, allowed_models=["sdxl", "flux-dev"]),
    )
    history = await plan_history(platform.database_url, "free")
    assert len(history) == 3 and "daily_token_limit=25" in history[2]  # seed, upload terms (0008), the change
    async with platform.client() as anonymous:
        plans = {p["tier"]: p for p in (await anonymous.get("/api/v1/plans")).json()["plans"]}
    assert plans["free"]["daily_token_limit"] == 25 and plans["admin"]["daily_token_limit"] is None
    with pytest.raises(SystemExit, match="UNKNOWN_PLAN"):
        await change_user_plan(
            platform.nats_url, platform.database_url, platform="web", user_id="carol", plan="platinum"
        )
    with pytest.raises(SystemExit, match="INVALID_PLAN"):
        await define_plan(
            platform.nats_url, platform.database_url, DefinePlan(command_id=uuid.uuid4(), tier="free", priority=7)
        )


async def test_the_rate_window_survives_a_scheduler_restart(platform: Platform) -> None:
    """Six echo submits on the free plan (6 a minute), then a new scheduler: the seventh is still
    refused, since the new leader reads the last minute's submits from the log."""
    key = await platform.user_key(plan="free")
    async with platform.client(key) as client:
        for n in range(6):
            r = await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": f"{n}"}})
            assert r.status_code == 202, r.text
        await platform.stop("scheduler")
        successor = Scheduler(platform.settings, nats_url=platform.nats_url, database_url=platform.database_url)
        await platform.start("scheduler", successor)
        await asyncio.wait_for(successor.is_leader.wait(), 10)
        r = await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "seventh"}})
        assert r.status_code == 429 and r.json()["code"] == "RATE_LIMITED", r.text
        assert r.headers["RateLimit-Remaining"] == "0"
