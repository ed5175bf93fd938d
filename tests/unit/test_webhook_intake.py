"""The webhook service skips job events nobody listens to without reading the job's stream, and
reads the stream whenever it cannot tell (a job submitted before it started reading)."""

from __future__ import annotations

import uuid

from events.types import JobSubmitted
from gateway.links import LinkSigner
from webhooks.intake import Endpoint, Endpoints, Intake


def submitted(user: uuid.UUID, webhook: str | None = None, kinds: list[str] | None = None) -> JobSubmitted:
    return JobSubmitted(
        user_id=user,
        frontend="api",
        capability="echo",
        model="echo",
        params={"prompt": "x"},
        priority=0,
        cost_tokens=0.0,
        webhook=webhook,
        webhook_events=kinds,
    )


def test_a_job_without_receivers_is_skipped_and_forgotten_at_its_end() -> None:
    intake = Intake(Endpoints(), "http://t", LinkSigner("k", 60))
    user, job = uuid.uuid4(), uuid.uuid4()
    intake.note(job, submitted(user))
    assert intake.nobody_hears(job, "start")
    assert intake.nobody_hears(job, "completed")
    assert job not in intake.submitted
    assert not intake.nobody_hears(job, "completed")  # unknown now: its stream would be read
    assert not intake.nobody_hears(uuid.uuid4(), "start")


def test_a_jobs_own_webhook_and_its_owners_endpoints_are_heard() -> None:
    endpoints = Endpoints()
    intake = Intake(endpoints, "http://t", LinkSigner("k", 60))
    user, job = uuid.uuid4(), uuid.uuid4()
    intake.note(job, submitted(user, "https://example.com/h", ["completed"]))
    assert intake.nobody_hears(job, "start")  # its webhook asked only for completion
    endpoints.by_id[uuid.uuid4()] = Endpoint(user_id=user, url="https://example.com/e", events=["start"])
    assert not intake.nobody_hears(job, "start")  # the owner's endpoint wants starts
    assert not intake.nobody_hears(job, "completed")
