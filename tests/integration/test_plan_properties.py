"""Property tests of quotas, charging and queue order against the real scheduler and PostgreSQL.

The scheduler runs in this process on real NATS and PostgreSQL; a scripted worker announces
GPU models and reports results when told; hypothesis draws the workloads. Each example uses
fresh users, so examples share the database without seeing each other.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import nats
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from base import catalog
from base.db import init_connection
from events.types import user_stream_id
from scheduler.service import Scheduler
from streams import subjects as s
from streams.commands import CommandBus
from streams.messages import CancelJob, CreateUser, Decision, DefinePlan, SubmitJob
from tests.conftest import test_settings as settings_for_tests
from tests.scripted_worker import ScriptedWorker

# Against live services a failing example is reported as found: shrinking it would replay the
# whole platform hundreds of times.
PROPERTY_SETTINGS = settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass
class Harness:
    scheduler: Scheduler
    bus: CommandBus
    worker: ScriptedWorker
    database_url: str

    async def send(self, subject: str, command: object) -> Decision:
        return await self.bus.send(subject, command, msg_id=f"{subject}:{uuid.uuid4()}", timeout=10)

    async def new_user(self, plan: str) -> uuid.UUID:
        name = f"prop-{uuid.uuid4().hex[:10]}"
        decision = await self.send(
            s.admin("user-create"),
            CreateUser(
                command_id=uuid.uuid4(),
                platform="web",
                platform_user_id=name,
                plan=plan,
                key_id=uuid.uuid4(),
                key_hash=uuid.uuid4().hex * 2,
                key_prefix="tsk_prop",
            ),
        )
        assert decision.ok, decision
        return user_stream_id("web", name)

    async def submit(
        self, user_id: uuid.UUID, capability: str, params: dict[str, object]
    ) -> tuple[uuid.UUID, Decision]:
        job_id = uuid.uuid4()
        decision = await self.send(
            s.CMD_SUBMIT,
            SubmitJob(
                command_id=uuid.uuid4(),
                job_id=job_id,
                user_id=user_id,
                frontend="api",
                capability=capability,
                params={"prompt": "p", **params},
                deadline=datetime.now(UTC) + timedelta(seconds=30),
            ),
        )
        return job_id, decision

    async def define_plan(self, tier: str, **terms: object) -> None:
        decision = await self.send(s.admin("plan-define"), DefinePlan(command_id=uuid.uuid4(), tier=tier, **terms))
        assert decision.ok, decision


@pytest.fixture
async def harness(nats_url: str, database_url: str) -> AsyncIterator[Harness]:
    scheduler = Scheduler(settings_for_tests(), nats_url=nats_url, database_url=database_url)
    task = asyncio.create_task(scheduler.run())
    await asyncio.wait_for(scheduler.is_leader.wait(), 10)
    worker = await ScriptedWorker(nats_url, "gpu-prop", ["sdxl", "gemma3-270m"], slots=1).start()
    for _ in range(200):
        if scheduler.state and scheduler.state.fleet_known and "gpu-prop" in scheduler.state.workers:
            break
        await asyncio.sleep(0.02)
    nc = await nats.connect(nats_url)
    bus = await CommandBus(nc).start()
    try:
        yield Harness(scheduler, bus, worker, database_url)
    finally:
        await bus.close()
        await nc.close()
        await worker.stop()
        await scheduler.stop()
        await asyncio.wait_for(task, 15)


async def drain_one_by_one(harness: Harness, expected: int, already: int) -> list[uuid.UUID]:
    """Finish each dispatch as it comes (one slot): the order the policy chose."""
    order = []
    for n in range(already, already + expected):
        dispatch = (await harness.worker.wait_for(n + 1))[n]
        order.append(dispatch.job_id)
        await harness.worker.finish(dispatch)
    return order


async def block_the_slot(harness: Harness) -> int:
    """Occupy the worker's only slot so that what is submitted next waits; returns dispatches so far."""
    blocker_user = await harness.new_user("admin")
    job_id, decision = await harness.submit(blocker_user, "image", {})
    assert decision.ok, decision
    dispatches = await harness.worker.wait_for(len(harness.worker.dispatches) + 1)
    assert dispatches[-1].job_id == job_id
    return len(dispatches)


def job_spec() -> st.SearchStrategy[tuple[str, dict[str, object]]]:
    image = st.builds(
        lambda side, batch: ("image", {"width": side, "height": side, "batch_size": batch}),
        st.sampled_from([512, 768, 1024]),
        st.integers(1, 4),
    )
    text = st.builds(lambda tokens: ("text", {"max_tokens": tokens}), st.integers(1, 8000))
    return st.one_of(image, text)


@PROPERTY_SETTINGS
@given(
    limit=st.integers(1, 12),
    jobs=st.lists(job_spec(), min_size=1, max_size=10),
    outcomes=st.lists(st.sampled_from(["complete", "fail", "cancel"]), min_size=10, max_size=10),
    measured=st.lists(st.integers(0, 9000), min_size=10, max_size=10),
)
async def test_concurrent_submits_never_exceed_the_quota_and_only_completed_work_is_charged(
    harness: Harness, limit: int, jobs: list[tuple[str, dict[str, object]]], outcomes: list[str], measured: list[int]
) -> None:
    harness.worker.slots = 64
    await harness.define_plan(
        "prop-quota",
        daily_token_limit=limit,
        requests_per_minute=10_000,
        max_concurrent_jobs=64,
        max_queued_jobs=1000,
        priority=1,
        max_resolution=1024,
        allowed_models=["sdxl"],
    )
    user = await harness.new_user("prop-quota")
    results = await asyncio.gather(*(harness.submit(user, capability, params) for capability, params in jobs))
    costs = {job_id: decision.job.cost_tokens for job_id, decision in results if decision.ok and decision.job}
    for _, decision in results:
        assert decision.ok or decision.code == "QUOTA_EXCEEDED", decision
    assert sum(costs.values()) <= limit + 1e-9  # reserved at admission: never more than the quota

    expected_charge = 0.0
    dispatches = {}
    for _ in range(100):
        dispatches = {d.job_id: d for d in harness.worker.dispatches}
        if set(costs) <= set(dispatches):
            break
        await asyncio.sleep(0.05)
    specs = {job_id: spec for (job_id, _), spec in zip(results, jobs, strict=True)}
    for n, job_id in enumerate(costs):
        outcome = outcomes[n]
        if outcome == "cancel":
            decision = await harness.send(s.CMD_CANCEL, CancelJob(command_id=uuid.uuid4(), job_id=job_id, user_id=user))
            assert decision.ok, decision
            await harness.worker.finish(dispatches[job_id])  # a late result: refused, never charged
        elif outcome == "fail":
            await harness.worker.finish(dispatches[job_id], fail="ENGINE_ERROR")
        else:
            capability, params = specs[job_id]
            usage = {"output_tokens": float(measured[n])} if capability == "text" else {}
            await harness.worker.finish(dispatches[job_id], usage=usage)
            model = catalog.Catalog.load().model_for(capability, None)
            expected_charge += min(costs[job_id], model.actual_cost({"prompt": "p", **params}, usage))

    conn = await asyncpg.connect(harness.database_url)
    await init_connection(conn)
    try:
        for _ in range(200):
            rows = await conn.fetch(
                "SELECT e.stream_id, e.type, e.data FROM events e WHERE e.stream_id = ANY($1::uuid[])"
                " AND e.type IN ('JobCompleted.v1', 'JobFailed.v1', 'JobCancelled.v1')",
                list(costs),
            )
            if len(rows) == len(costs):
                break
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    assert len(rows) == len(costs)  # every admitted job reached exactly one terminal state
    charged = sum(r["data"]["cost_tokens"] for r in rows if r["type"] == "JobCompleted.v1")
    assert charged == pytest.approx(expected_charge)
    for r in rows:
        if r["type"] != "JobCompleted.v1":  # failed or cancelled: the whole reservation comes back
            assert r["data"]["released_tokens"] == pytest.approx(costs[r["stream_id"]])
        assert (
            r["data"]["cost_tokens" if r["type"] == "JobCompleted.v1" else "released_tokens"]
            <= costs[r["stream_id"]] + 1e-9
        )
    state = harness.scheduler.state
    assert state is not None
    ledger = state.ledger[(user, state.quota_day())]
    assert ledger.used == pytest.approx(expected_charge) and ledger.reserved == pytest.approx(0.0)


@PROPERTY_SETTINGS
@given(tiers=st.lists(st.sampled_from(["free", "starter", "pro", "admin"]), min_size=2, max_size=7))
async def test_a_higher_tier_is_dispatched_first_when_both_wait(harness: Harness, tiers: list[str]) -> None:
    harness.worker.slots = 1
    before = await block_the_slot(harness)
    priority = {}
    for tier in tiers:
        user = await harness.new_user(tier)
        job_id, decision = await harness.submit(user, "image", {})
        assert decision.ok, decision
        priority[job_id] = harness.scheduler.state.plans[tier].priority  # type: ignore[union-attr]
    await harness.worker.finish(harness.worker.dispatches[before - 1])  # free the slot
    order = await drain_one_by_one(harness, len(tiers), before)
    assert [priority[j] for j in order] == sorted(priority.values(), reverse=True)


@PROPERTY_SETTINGS
@given(backlogs=st.lists(st.integers(1, 5), min_size=2, max_size=4), interleave=st.randoms(use_true_random=False))
async def test_no_user_waits_behind_more_than_a_bounded_number_of_another_users_jobs(
    harness: Harness, backlogs: list[int], interleave
) -> None:  # type: ignore[no-untyped-def]
    harness.worker.slots = 1
    before = await block_the_slot(harness)
    users = [await harness.new_user("pro") for _ in backlogs]
    submissions = [u for u, n in zip(users, backlogs, strict=True) for _ in range(n)]
    interleave.shuffle(submissions)
    owner: dict[uuid.UUID, uuid.UUID] = {}
    for user in submissions:
        job_id, decision = await harness.submit(user, "image", {})
        assert decision.ok, decision
        owner[job_id] = user
    await harness.worker.finish(harness.worker.dispatches[before - 1])
    order = await drain_one_by_one(harness, len(submissions), before)
    # Round robin: a user's i-th job (from 0) starts after at most i + 1 jobs of any other one user.
    for user in users:
        own = [n for n, job_id in enumerate(order) if owner[job_id] == user]
        for i, position in enumerate(own):
            ahead = [owner[j] for j in order[:position] if owner[j] != user]
            assert all(ahead.count(other) <= i + 1 for other in set(ahead)), (i, order)
