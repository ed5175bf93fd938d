"""The scheduler reconciles what it believes each worker runs with what the worker says it holds.

Driven directly on the synchronous state, with the monotonic clock passed in: an attempt a worker
does not hold is requeued after the grace period, but only once every report the worker had
stored by then has been read; the scheduler's own NATS outage never makes a worker lost; a job
whose engine could not be reached is retried, not failed.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from events.job import JobStatus
from events.types import JobRequeued
from scheduler.state import SchedulerState
from streams.messages import EnginePool, ReportCompleted, ReportFailed, WorkerStatus
from tests.unit.test_worker_slots import INSTANCE, complete, make_state, submit

ECHO = [EnginePool(engine="echo", models=["echo"], slots=4)]
T0 = 1000.0


def heartbeat(held: dict[uuid.UUID, int], reported_seq: int = 0, instance: uuid.UUID = INSTANCE) -> WorkerStatus:
    return WorkerStatus(
        worker_id="w1",
        instance_id=instance,
        capabilities=["echo"],
        engines=["echo"],
        models=["echo"],
        loaded_models=["echo"],
        slots=4,
        running=list(held),
        held=held,
        reported_seq=reported_seq,
        sent_at=datetime.now(UTC),
        pools=ECHO,
        heartbeat_interval_s=1.0,
    )


def running_job(state: SchedulerState, users: dict[str, uuid.UUID]) -> uuid.UUID:
    state.clock = time.time  # a requeued job's queue time is the event's, in real time
    state.worker_seen(heartbeat({}), T0)
    job_id = submit(state, users["free"], "echo")
    state.schedule()
    effects = state.take_effects()
    assert [d.job_id for _, d in effects.dispatches] == [job_id]
    assert effects.dispatches[0][1].instance_id == INSTANCE  # addressed to this life of the worker
    return job_id


def requeues(state: SchedulerState) -> list[JobRequeued]:
    return [p.data for p in state.take_effects().pending if isinstance(p.data, JobRequeued)]


def test_an_attempt_the_worker_never_got_is_requeued_after_the_grace_period() -> None:
    state, users = make_state()
    job_id = running_job(state, users)
    state.worker_seen(heartbeat({}), T0 + 1)  # dispatched, not held: missing from now on
    state.tick(T0 + 3)
    assert state.jobs[job_id].status is JobStatus.RUNNING  # within the grace: the fetch may be late
    state.worker_seen(heartbeat({}), T0 + 8)
    state.tick(T0 + 11.5)
    [requeued] = requeues(state)
    assert requeued.attempt == 1 and "never ran attempt 1" in requeued.reason
    assert state.jobs[job_id].status is JobStatus.QUEUED
    view = state.workers["w1"]
    assert job_id not in view.running and view.free_slots == 4  # its slot is free again
    state.schedule()  # and it runs again, as attempt 2, on the same (healthy) worker
    [(worker_id, dispatch)] = state.take_effects().dispatches
    assert (worker_id, dispatch.job_id, dispatch.attempt) == ("w1", job_id, 2)


def test_an_attempt_held_again_is_not_requeued() -> None:
    state, users = make_state()
    job_id = running_job(state, users)
    state.worker_seen(heartbeat({}), T0 + 1)
    state.worker_seen(heartbeat({job_id: 1}), T0 + 2)  # fetched after all
    state.worker_seen(heartbeat({job_id: 1}), T0 + 10)
    state.tick(T0 + 10)
    assert requeues(state) == [] and state.jobs[job_id].status is JobStatus.RUNNING


def test_a_finished_attempt_whose_report_is_not_read_yet_is_not_requeued() -> None:
    state, users = make_state()
    job_id = running_job(state, users)
    state.commands_seq = 40
    # The worker finished and stored its report at seq 57, then sent a heartbeat without the job.
    state.worker_seen(heartbeat({}, reported_seq=57), T0 + 1)
    state.worker_seen(heartbeat({}, reported_seq=57), T0 + 29)
    state.tick(T0 + 30)  # long past the grace, but the report has not been read
    assert requeues(state) == [] and state.jobs[job_id].status is JobStatus.RUNNING
    complete(state, job_id)  # the report arrives: completed once, nothing to requeue
    state.commands_seq = 57
    state.tick(T0 + 31)
    assert state.jobs[job_id].status is JobStatus.COMPLETED
    assert requeues(state) == []


def test_a_report_read_and_still_missing_is_requeued() -> None:
    state, users = make_state()
    job_id = running_job(state, users)
    state.commands_seq = 40
    state.worker_seen(heartbeat({}, reported_seq=57), T0 + 1)
    state.commands_seq = 60  # read past its reports, and this attempt is not among them
    state.worker_seen(heartbeat({}, reported_seq=57), T0 + 9)
    state.tick(T0 + 12)
    assert [r.attempt for r in requeues(state)] == [1]
    assert state.jobs[job_id].status is JobStatus.QUEUED


def test_the_schedulers_own_outage_makes_no_worker_lost() -> None:
    state, users = make_state()
    job_id = running_job(state, users)
    state.worker_seen(heartbeat({job_id: 1}), T0 + 1)
    state.connection_lost()
    state.tick(T0 + 60)  # a minute without a heartbeat, all of it while cut off
    assert "w1" in state.workers and state.jobs[job_id].status is JobStatus.RUNNING
    state.connection_back(T0 + 61)
    state.tick(T0 + 61 + state.limits.worker_timeout_s - 1)  # a full timeout from the reconnect
    assert "w1" in state.workers and state.jobs[job_id].status is JobStatus.RUNNING
    state.tick(T0 + 61 + state.limits.worker_timeout_s + 1)  # silent while connected: lost
    assert "w1" not in state.workers and state.jobs[job_id].status is JobStatus.QUEUED


def test_a_restarted_worker_loses_its_attempts_and_gets_them_again_as_new_ones() -> None:
    state, users = make_state()
    job_id = running_job(state, users)
    new_life = uuid.UUID(int=2)
    state.worker_seen(heartbeat({}, instance=new_life), T0 + 1)
    state.schedule()
    effects = state.take_effects()
    assert effects.purge_workers == ["w1"]
    [(_, dispatch)] = effects.dispatches
    assert (dispatch.job_id, dispatch.attempt, dispatch.instance_id) == (job_id, 2, new_life)


def failure(job_id: uuid.UUID, attempt: int, code: str) -> ReportFailed:
    return ReportFailed(job_id=job_id, worker_id="w1", attempt=attempt, code=code, message="connection refused")


def test_an_unreachable_engine_requeues_the_job_until_its_attempts_are_spent() -> None:
    state, users = make_state()
    job_id = running_job(state, users)
    for attempt in (1, 2):
        state.failed(failure(job_id, attempt, "ENGINE_UNAVAILABLE"), "test")
        assert state.jobs[job_id].status is JobStatus.QUEUED
        assert state.workers["w1"].free_slots == 4  # the attempt's slot is let go
        state.schedule()
        assert state.jobs[job_id].attempt == attempt + 1
    state.failed(failure(job_id, 3, "ENGINE_DISCONNECTED"), "test")
    job = state.jobs[job_id]
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error["code"] == "ENGINE_DISCONNECTED" and "attempt 3 of 3" in job.error["message"]


def test_a_one_slot_engine_serves_again_after_a_requeue() -> None:
    """The engine's only slot is let go when its attempt is requeued, so the next job of that engine
    is dispatched (it once stayed held, and every later TTS job waited forever)."""
    state, users = make_state()
    one_slot = [EnginePool(engine="piper", models=["piper-joe"], slots=1)]
    state.clock = time.time
    status = WorkerStatus(
        worker_id="w1",
        instance_id=INSTANCE,
        capabilities=["tts"],
        engines=["piper"],
        models=["piper-joe"],
        loaded_models=["piper-joe"],
        slots=1,
        running=[],
        held={},
        sent_at=datetime.now(UTC),
        pools=one_slot,
        heartbeat_interval_s=1.0,
    )
    state.worker_seen(status, T0)
    first, second = submit(state, users["free"], "tts"), submit(state, users["free"], "tts")
    state.schedule()
    assert [d.job_id for _, d in state.take_effects().dispatches] == [first]
    state.worker_seen(status, T0 + 1)  # it never got it
    state.worker_seen(status, T0 + 9)
    state.tick(T0 + 12)
    state.schedule()
    dispatched = [(d.job_id, d.attempt) for _, d in state.take_effects().dispatches]
    assert dispatched == [(first, 2)]  # back in its place, on the freed slot
    state.completed(
        ReportCompleted(job_id=first, worker_id="w1", attempt=2, artifacts=[], execution_time_seconds=0.1), "test"
    )
    state.schedule()
    assert [d.job_id for _, d in state.take_effects().dispatches] == [second]


def test_a_job_error_is_not_retried() -> None:
    state, users = make_state()
    job_id = running_job(state, users)
    state.failed(failure(job_id, 1, "INVALID_PARAMS"), "test")
    assert state.jobs[job_id].status is JobStatus.FAILED


def test_a_job_running_on_a_worker_nobody_knows_is_requeued() -> None:
    """A new leader loads a running job whose worker left the bucket before it started: no
    heartbeat will ever come to judge that worker by, so the job is requeued after a timeout."""
    state, users = make_state()
    job_id = running_job(state, users)
    del state.workers["w1"]  # as if loaded with no entry for the worker
    state.tick(T0 + 1)
    state.tick(T0 + 1 + state.limits.worker_timeout_s - 1)
    assert state.jobs[job_id].status is JobStatus.RUNNING
    state.tick(T0 + 3 + state.limits.worker_timeout_s)
    [requeued] = requeues(state)
    assert "not online" in requeued.reason and state.jobs[job_id].status is JobStatus.QUEUED


def test_a_model_offered_again_is_dispatched_again() -> None:
    """A worker withdraws a model (its engine is down), then offers it again: the waiting job goes
    to it. The worker's cache of models with room once outlived the change of its pools."""
    state, users = make_state()
    state.clock = time.time
    state.worker_seen(heartbeat({}), T0)
    withdrawn = WorkerStatus(
        worker_id="w1",
        instance_id=INSTANCE,
        capabilities=[],
        engines=[],
        models=[],
        loaded_models=[],
        slots=4,
        running=[],
        held={},
        sent_at=datetime.now(UTC),
        pools=[],
        heartbeat_interval_s=1.0,
    )
    job_id = submit(state, users["free"], "echo")
    assert state.workers["w1"].models_with_room() == {"echo"}  # cached
    state.worker_seen(withdrawn, T0 + 1)
    state.schedule()
    assert state.take_effects().dispatches == []
    state.worker_seen(heartbeat({}), T0 + 2)
    state.schedule()
    assert [d.job_id for _, d in state.take_effects().dispatches] == [job_id]
