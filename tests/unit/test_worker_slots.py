"""A worker's slots are shared by its engines, and each engine also has its own.

The scheduler's in-memory state is synchronous and does no I/O, so these tests drive it directly:
plans as their seed events, a worker as its announcement, jobs as the commands that create them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import msgspec

from events.store import PendingEvent
from events.types import PlanDefined, UserRegistered, plan_stream_id, user_stream_id
from scheduler.state import SchedulerState
from streams.messages import CancelJob, EnginePool, ReportCompleted, SubmitJob, WorkerStatus

NOW = 1_800_000_000.0
INSTANCE = uuid.UUID(int=1)  # one worker process throughout: a new instance would mean a restart


def plan(tier: str, priority: int) -> PlanDefined:
    return PlanDefined(
        tier=tier,
        name=tier.title(),
        daily_token_limit=None,
        requests_per_minute=10_000,
        max_concurrent_jobs=100,
        max_queued_jobs=1000,
        priority=priority,
        max_resolution=2048,
        allowed_models=["*"],
    )


def make_state() -> tuple[SchedulerState, dict[str, uuid.UUID]]:
    state = SchedulerState(wall_clock=lambda: NOW)
    seq = 0
    users = {}
    for tier, priority in (("free", 0), ("pro", 2)):
        seq += 1
        state.apply(
            PendingEvent(
                stream_type="plan", stream_id=plan_stream_id(tier), version=1, data=plan(tier, priority)
            ).recorded(seq)
        )
        seq += 1
        users[tier] = user_stream_id("web", tier)
        state.apply(
            PendingEvent(
                stream_type="user",
                stream_id=users[tier],
                version=1,
                data=UserRegistered(platform="web", platform_user_id=tier, plan=tier),
            ).recorded(seq)
        )
    state.fleet_known = True
    return state, users


def worker(pools: list[EnginePool], slots: int | None = None, running: list[uuid.UUID] | None = None) -> WorkerStatus:
    models = sorted(m for p in pools for m in p.models)
    return WorkerStatus(
        worker_id="w1",
        instance_id=INSTANCE,
        capabilities=[],
        engines=[p.engine for p in pools],
        models=models,
        loaded_models=models,
        slots=slots or sum(p.slots for p in pools),
        running=running or [],
        sent_at=datetime.now(UTC),
        pools=pools,
    )


ECHO_AND_TTS = [
    EnginePool(engine="echo", models=["echo"], slots=256),
    EnginePool(engine="piper", models=["piper-joe"], slots=1),  # the default TTS model's engine
]


def submit(state: SchedulerState, user_id: uuid.UUID, capability: str) -> uuid.UUID:
    job_id = uuid.uuid4()
    state.submit(
        SubmitJob(
            command_id=uuid.uuid4(),
            job_id=job_id,
            user_id=user_id,
            frontend="api",
            capability=capability,
            params={"prompt": "hello"},
            deadline=datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=30),
        ),
        None,
        "test",
    )
    return job_id


def dispatched(state: SchedulerState) -> list[uuid.UUID]:
    state.schedule()
    return [d.job_id for _, d in state.take_effects().dispatches]


def complete(state: SchedulerState, job_id: uuid.UUID) -> None:
    job = state.jobs[job_id]
    state.completed(
        ReportCompleted(job_id=job_id, worker_id="w1", attempt=job.attempt, artifacts=[], execution_time_seconds=0.1),
        "test",
    )


def test_an_engine_with_one_slot_gets_one_job_while_another_engine_takes_many() -> None:
    state, users = make_state()
    state.worker_seen(worker(ECHO_AND_TTS))
    tts = [submit(state, users["free"], "tts") for _ in range(3)]
    echo = [submit(state, users["free"], "echo") for _ in range(5)]
    first = dispatched(state)
    assert sorted(first) == sorted([tts[0], *echo])  # one Piper job, every echo job
    assert dispatched(state) == []  # the Piper slot is taken; the other two wait in the queue
    complete(state, tts[0])
    assert dispatched(state) == [tts[1]]


def test_a_waiting_job_of_a_higher_tier_takes_the_engine_slot_next() -> None:
    """The queue stays in the scheduler, where the policy orders it, not inside a busy worker."""
    state, users = make_state()
    state.worker_seen(worker(ECHO_AND_TTS))
    free_jobs = [submit(state, users["free"], "tts") for _ in range(3)]
    assert dispatched(state) == [free_jobs[0]]
    pro_job = submit(state, users["pro"], "tts")
    complete(state, free_jobs[0])
    assert dispatched(state) == [pro_job]


def test_the_worker_total_caps_all_engines_together() -> None:
    state, users = make_state()
    state.worker_seen(worker(ECHO_AND_TTS, slots=2))
    jobs = [submit(state, users["free"], "echo") for _ in range(4)]
    assert dispatched(state) == jobs[:2]
    assert state.capable_slots("echo") == 2 and state.capable_slots("piper-joe") == 1


def test_a_cancelled_running_job_holds_its_engine_slot_until_the_worker_lets_go() -> None:
    state, users = make_state()
    state.worker_seen(worker(ECHO_AND_TTS))
    first, second = submit(state, users["free"], "tts"), submit(state, users["free"], "tts")
    assert dispatched(state) == [first]
    state.cancel(CancelJob(command_id=uuid.uuid4(), job_id=first, user_id=users["free"]), None, "test")
    assert dispatched(state) == []  # the engine may still be busy with it
    state.worker_seen(worker(ECHO_AND_TTS, running=[]))  # the next heartbeat: it let go
    assert dispatched(state) == [second]


def test_a_worker_that_lists_no_pools_shares_its_slots_among_all_its_models() -> None:
    state, users = make_state()
    status = worker(ECHO_AND_TTS, slots=2)
    state.worker_seen(WorkerStatus(**{f: getattr(status, f) for f in status.__struct_fields__ if f != "pools"}))
    jobs = [submit(state, users["free"], "tts") for _ in range(3)]
    assert dispatched(state) == jobs[:2]


def test_a_worker_announces_one_pool_per_engine_and_their_sum_as_its_slots() -> None:
    from worker_node.engines.echo import EchoEngine
    from worker_node.engines.espeak import EspeakEngine
    from worker_node.service import Worker

    status = Worker(nats_url="nats://unused", worker_id="w1", engines=[EchoEngine(), EspeakEngine()]).status()
    assert [(p.engine, p.models, p.slots) for p in status.pools] == [
        ("echo", ["echo"], 256),
        ("espeak", ["espeak-ng"], 1),
    ]
    assert status.slots == 257
    assert status.slots_for("espeak-ng") == 1 and status.slots_for("sdxl") == 0
    capped = Worker(nats_url="nats://unused", worker_id="w1", engines=[EchoEngine(), EspeakEngine()], slots=8)
    assert capped.status().slots == 8 and capped.status().slots_for("echo") == 8


def test_a_job_requeued_from_a_lost_worker_goes_back_to_its_place_in_the_queue() -> None:
    state, users = make_state()
    pools = [EnginePool(engine="piper", models=["piper-joe"], slots=1)]
    state.worker_seen(worker(pools))
    first, second, _ = (submit(state, users["free"], "tts") for _ in range(3))
    assert dispatched(state) == [first]
    restarted = msgspec.structs.replace(worker(pools), instance_id=uuid.UUID(int=2))
    state.worker_seen(restarted)  # a new instance: the first one's attempt is lost
    assert state.jobs[first].status.value == "QUEUED"
    assert dispatched(state) == [first]  # ahead of the two admitted after it
    complete(state, first)
    assert dispatched(state) == [second]
