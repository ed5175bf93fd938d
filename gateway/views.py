"""Response bodies, built from folded job state and recorded events."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from events.job import Job
from events.types import Artifact, JobCompleted, RecordedEvent, encode


class JobCreate(BaseModel):
    """A job request. `params.prompt` is required; `params.model` picks a model of the capability."""

    capability: str = Field(description="image | video | text | tts | stt | echo (diagnostic)", max_length=20)
    params: dict[str, Any] = Field(description="prompt (required), model, and capability-specific settings")
    frontend: str | None = Field(default=None, max_length=20)
    bot_id: str | None = Field(default=None, max_length=64)
    user_ref: str | None = Field(default=None, max_length=120, description="With a frontend key: 'telegram:123'")
    reply_context: dict[str, Any] | None = None


class JobAccepted(BaseModel):
    job_id: uuid.UUID
    status: str
    cost_tokens: float
    estimated_time_seconds: float | None
    queue_position: int | None


class ArtifactView(BaseModel):
    id: uuid.UUID
    type: str
    format: str
    content_type: str
    size_bytes: int
    url: str
    text: str | None = None
    width: int | None = None
    height: int | None = None
    duration_seconds: float | None = None
    expires_at: datetime | None = None


class JobView(BaseModel):
    job_id: uuid.UUID
    status: str
    version: int
    capability: str
    model: str
    params: dict[str, Any]
    frontend: str
    bot_id: str | None
    user_ref: str | None
    priority: int
    cost_tokens: float
    worker_id: str | None
    attempt: int
    queue_position: int | None
    estimated_time_seconds: float | None
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    execution_time_seconds: float | None
    error: dict[str, Any] | None
    artifacts: list[ArtifactView]


class EventView(BaseModel):
    seq: int
    version: int
    type: str
    recorded_at: datetime
    causation_id: str | None
    data: dict[str, Any]


def artifact_view(artifact: Artifact, base_url: str) -> ArtifactView:
    return ArtifactView(
        id=artifact.id, type=artifact.kind, format=artifact.format, content_type=artifact.content_type,
        size_bytes=artifact.size_bytes, url=f"{base_url}/api/v1/artifacts/{artifact.id}", text=artifact.text,
        width=artifact.width, height=artifact.height, duration_seconds=artifact.duration_seconds,
        expires_at=artifact.expires_at)


def completed_artifacts(records: list[RecordedEvent]) -> list[Artifact]:
    for rec in records:
        if isinstance(rec.data, JobCompleted):
            return list(rec.data.artifacts)
    return []


def job_view(job: Job, records: list[RecordedEvent], base_url: str, queue_position: int | None,
             estimate: float | None) -> JobView:
    return JobView(
        job_id=job.id, status=job.status.value, version=job.version, capability=job.capability, model=job.model,
        params=job.params, frontend=job.frontend, bot_id=job.bot_id, user_ref=job.user_ref, priority=job.priority,
        cost_tokens=job.cost_tokens, worker_id=job.worker_id, attempt=job.attempt, queue_position=queue_position,
        estimated_time_seconds=estimate, created_at=job.created_at, queued_at=job.queued_at,
        started_at=job.started_at, ended_at=job.ended_at, execution_time_seconds=job.execution_time_seconds,
        error=job.error, artifacts=[artifact_view(a, base_url) for a in completed_artifacts(records)])


def event_view(rec: RecordedEvent) -> EventView:
    import msgspec

    data = msgspec.json.decode(encode(rec.data))
    data.pop("type", None)
    return EventView(seq=rec.seq, version=rec.version, type=rec.type, recorded_at=rec.recorded_at,
                     causation_id=rec.causation_id, data=data)
