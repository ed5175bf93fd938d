"""Each job's queue position is exact when it is admitted, also for jobs admitted in one batch
(the 202 once gave every job of a commit batch the batch's last position)."""

from __future__ import annotations

import uuid

import msgspec

from events.job import JobStatus
from streams.messages import CancelJob, EnginePool
from tests.unit.test_reconcile import T0, heartbeat
from tests.unit.test_worker_grace import submit
from tests.unit.test_worker_slots import make_state

ONE_SLOT = msgspec.structs.replace(heartbeat({}), slots=1, pools=[EnginePool(engine="echo", models=["echo"], slots=1)])


def test_positions_are_exact_within_a_batch_and_follow_the_tiers() -> None:
    state, users = make_state()
    state.worker_seen(ONE_SLOT, T0)
    busy = submit(state, users["pro"], "echo")
    state.schedule()
    assert state.jobs[busy].status is JobStatus.RUNNING
    state.take_effects()
    batch = [submit(state, users["free"], "echo") for _ in range(3)]  # one batch: no commit in between
    assert [state.summary(state.jobs[j]).queue_position for j in batch] == [0, 1, 2]
    urgent = submit(state, users["pro"], "echo")  # a higher tier goes ahead of them all
    assert state.summary(state.jobs[urgent]).queue_position == 0
    assert [state.summary(state.jobs[j]).queue_position for j in batch] == [1, 2, 3]
    state.cancel(CancelJob(command_id=uuid.uuid4(), job_id=batch[1], user_id=users["free"]), None, "test")
    assert [state.summary(state.jobs[j]).queue_position for j in (batch[0], batch[2])] == [1, 2]
