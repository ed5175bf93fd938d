"""A worker that went away lately still counts for admission: its jobs queue while it restarts.

Driven on the synchronous state with the monotonic clock passed in (heartbeats and ticks). A model
no worker has offered within the grace window is refused at once, as is one whose engine a live
worker stopped offering (that engine is down, not restarting).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import msgspec

from events.job import JobStatus
from scheduler.state import SchedulerState
from streams.messages import EnginePool, SubmitJob
from tests.unit.test_reconcile import ECHO, T0, heartbeat
from tests.unit.test_worker_slots import NOW, make_state

GRACE = 300.0  # Limits' default


def refused_codes(state: SchedulerState) -> list[str | None]:
    return [decision.code for _, _, decision in state.take_effects().replies if not decision.ok]


def submit(state: SchedulerState, user_id: uuid.UUID, capability: str) -> uuid.UUID:
    job_id = uuid.uuid4()
    command = SubmitJob(
        command_id=uuid.uuid4(),
        job_id=job_id,
        user_id=user_id,
        frontend="api",
        capability=capability,
        params={"prompt": "hello"},
        deadline=datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=30),
    )
    state.submit(command, "reply-inbox", "test")
    return job_id


def test_a_restarting_workers_jobs_queue_and_run_when_it_is_back() -> None:
    state, users = make_state()
    state.worker_seen(heartbeat({}), T0)
    state.tick(T0 + 11)  # no heartbeat for longer than the timeout: lost
    assert "w1" not in state.workers
    job_id = submit(state, users["pro"], "echo")
    assert state.jobs[job_id].status is JobStatus.QUEUED  # not refused: w1 served echo 11 s ago
    state.schedule()
    assert not state.take_effects().dispatches  # nobody to run it yet
    state.worker_seen(heartbeat({}), T0 + 20)  # back
    state.schedule()
    assert [d.job_id for _, d in state.take_effects().dispatches] == [job_id]


def test_after_the_grace_window_or_for_a_model_never_served_the_refusal_is_immediate() -> None:
    state, users = make_state()
    state.worker_seen(heartbeat({}), T0)
    state.tick(T0 + GRACE + 1)
    state.take_effects()
    job_id = submit(state, users["pro"], "echo")
    assert job_id not in state.jobs
    assert refused_codes(state) == ["NO_CAPABLE_WORKER"]
    fresh, users = make_state()
    fresh.worker_seen(heartbeat({}), T0)
    submit(fresh, users["pro"], "tts")  # no worker ever offered a tts model
    assert refused_codes(fresh) == ["NO_CAPABLE_WORKER"]


def test_a_model_a_live_worker_withdrew_is_refused_at_once() -> None:
    state, users = make_state()
    both = msgspec.structs.replace(
        heartbeat({}),
        models=["echo", "piper-joe"],
        capabilities=["echo", "tts"],
        pools=[*ECHO, EnginePool(engine="piper", models=["piper-joe"], slots=1)],
    )
    state.worker_seen(both, T0)
    state.worker_seen(heartbeat({}), T0 + 1)  # its Piper engine went down: echo only
    state.take_effects()
    submit(state, users["pro"], "tts")
    assert refused_codes(state) == ["NO_CAPABLE_WORKER"]
