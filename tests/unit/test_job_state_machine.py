"""The job fold allows exactly the seeds' transitions (plus re-queue of a lost attempt)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.errors import IllegalTransition
from events.job import TRANSITIONS, JobStatus, evolve, fold
from events.types import (
    JobCancelled,
    JobCompleted,
    JobDispatched,
    JobFailed,
    JobQueued,
    JobRequeued,
    JobStarted,
    JobSubmitted,
    RecordedEvent,
)

JOB = uuid.uuid4()


def rec(version: int, data: object) -> RecordedEvent:
    return RecordedEvent(
        seq=version,
        event_id=uuid.uuid4(),
        stream_type="job",
        stream_id=JOB,
        version=version,
        recorded_at=datetime.now(UTC),
        causation_id=None,
        data=data,
    )  # type: ignore[arg-type]


SUBMITTED = JobSubmitted(
    user_id=uuid.uuid4(),
    frontend="api",
    capability="echo",
    model="echo",
    params={"prompt": "hi"},
    priority=0,
    cost_tokens=0,
)
EVENTS = {
    "queued": JobQueued(priority=0),
    "dispatched": JobDispatched(worker_id="w", attempt=1, reason="test"),
    "started": JobStarted(worker_id="w", attempt=1),
    "completed": JobCompleted(worker_id="w", attempt=1, artifacts=[], execution_time_seconds=0.1, cost_tokens=0),
    "failed": JobFailed(code="X", message="x"),
    "cancelled": JobCancelled(reason="r", requested_by="user"),
    "requeued": JobRequeued(worker_id="w", attempt=1, reason="lost"),
}


def test_happy_path_reaches_completed() -> None:
    job = fold(
        [
            rec(1, SUBMITTED),
            rec(2, EVENTS["queued"]),
            rec(3, EVENTS["dispatched"]),
            rec(4, EVENTS["started"]),
            rec(5, EVENTS["completed"]),
        ]
    )
    assert job is not None and job.status is JobStatus.COMPLETED and job.version == 5 and job.attempt == 1


def test_first_event_must_be_submitted() -> None:
    with pytest.raises(IllegalTransition):
        evolve(None, rec(1, EVENTS["queued"]))


def test_versions_must_be_contiguous() -> None:
    job = evolve(None, rec(1, SUBMITTED))
    with pytest.raises(IllegalTransition):
        evolve(job, rec(3, EVENTS["queued"]))


@pytest.mark.parametrize("terminal", ["completed", "failed", "cancelled"])
def test_nothing_follows_a_terminal_state(terminal: str) -> None:
    events = [SUBMITTED, EVENTS["queued"], EVENTS["dispatched"], EVENTS[terminal]]
    job = fold([rec(i + 1, e) for i, e in enumerate(events)])
    assert job is not None and job.status.terminal
    for event in EVENTS.values():
        with pytest.raises(IllegalTransition):
            evolve(job, rec(5, event))


def test_queued_job_cannot_complete_without_running() -> None:
    job = fold([rec(1, SUBMITTED), rec(2, EVENTS["queued"])])
    with pytest.raises(IllegalTransition):
        evolve(job, rec(3, EVENTS["completed"]))


@given(st.lists(st.sampled_from(sorted(EVENTS)), max_size=8))
def test_every_reachable_state_follows_the_transition_table(names: list[str]) -> None:
    job = evolve(None, rec(1, SUBMITTED))
    for name in names:
        before = job.status
        try:
            job = evolve(job, rec(job.version + 1, EVENTS[name]))
        except IllegalTransition:
            continue
        assert job.status is before or job.status in TRANSITIONS[before]
