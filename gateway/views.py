"""Response bodies, built from folded job state and recorded events (the bodies themselves are
declared in `gateway.schemas`)."""

from __future__ import annotations

from events.job import Job
from events.types import Artifact, JobCompleted, RecordedEvent, encode
from gateway.links import LinkSigner
from gateway.schemas import ArtifactView, EventView, JobView


def artifact_view(artifact: Artifact, base_url: str, links: LinkSigner) -> ArtifactView:
    signed_url, signed_url_expires_at = links.link(base_url, artifact.id, artifact.expires_at)
    return ArtifactView(
        id=artifact.id,
        type=artifact.kind,
        format=artifact.format,
        content_type=artifact.content_type,
        size_bytes=artifact.size_bytes,
        url=f"{base_url}/api/v1/artifacts/{artifact.id}",
        text=artifact.text,
        width=artifact.width,
        height=artifact.height,
        duration_seconds=artifact.duration_seconds,
        expires_at=artifact.expires_at,
        signed_url=signed_url,
        signed_url_expires_at=signed_url_expires_at,
    )


def completed_artifacts(records: list[RecordedEvent]) -> list[Artifact]:
    for rec in records:
        if isinstance(rec.data, JobCompleted):
            return list(rec.data.artifacts)
    return []


def job_view(
    job: Job,
    records: list[RecordedEvent],
    base_url: str,
    queue_position: int | None,
    estimate: float | None,
    links: LinkSigner,
) -> JobView:
    return JobView(
        job_id=job.id,
        status=job.status.value,
        version=job.version,
        capability=job.capability,
        model=job.model,
        params=job.params,
        frontend=job.frontend,
        bot_id=job.bot_id,
        user_ref=job.user_ref,
        priority=job.priority,
        cost_tokens=job.cost_tokens,
        worker_id=job.worker_id,
        attempt=job.attempt,
        queue_position=queue_position,
        estimated_time_seconds=estimate,
        created_at=job.created_at,
        queued_at=job.queued_at,
        started_at=job.started_at,
        ended_at=job.ended_at,
        execution_time_seconds=job.execution_time_seconds,
        error=job.error,
        artifacts=[artifact_view(a, base_url, links) for a in completed_artifacts(records)],
    )


def event_view(rec: RecordedEvent) -> EventView:
    import msgspec

    data = msgspec.json.decode(encode(rec.data))
    data.pop("type", None)
    return EventView(
        seq=rec.seq,
        version=rec.version,
        type=rec.type,
        recorded_at=rec.recorded_at,
        causation_id=rec.causation_id,
        data=data,
    )
