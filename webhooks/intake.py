"""From committed events to messages: who is told what.

The service reads the event log in order. It folds the webhook endpoints' own events as it goes,
so an event is matched against the endpoints as they were when it was recorded, and it turns each
job event that a receiver asked for into one message per receiver: the job's owner's endpoints
whose `events` include its kind, and the job's own `webhook` (per-job) if its filter does. A
message's body is the job as `GET /api/v1/jobs/{id}` showed it right after that event.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from events.job import Job, fold
from events.types import (
    JobCancelled,
    JobCompleted,
    JobDispatched,
    JobFailed,
    JobSubmitted,
    RecordedEvent,
    WebhookEndpointCreated,
    WebhookEndpointDeleted,
    WebhookEndpointUpdated,
    WebhookSecretRotated,
)
from gateway.links import LinkSigner
from gateway.views import job_view
from webhooks.store import NewMessage

NAMESPACE = uuid.UUID("1b0c3e52-8a4e-4f7e-9d0c-776562686f6b")
KINDS = ("start", "progress", "completed")


@dataclass
class Endpoint:
    user_id: uuid.UUID
    url: str
    events: list[str]
    enabled: bool = True
    secret_sealed: str = ""
    previous_sealed: str | None = None
    previous_expires_at: datetime | None = None
    deleted: bool = False


@dataclass
class Endpoints:
    """Every endpoint, as the events read so far leave it."""

    by_id: dict[uuid.UUID, Endpoint] = field(default_factory=dict)

    def apply(self, rec: RecordedEvent) -> uuid.UUID | None:
        """Fold one event; returns the endpoint's id when it stopped taking deliveries."""
        event = rec.data
        if isinstance(event, WebhookEndpointCreated):
            self.by_id[rec.stream_id] = Endpoint(
                user_id=event.user_id, url=event.url, events=list(event.events), secret_sealed=event.secret_sealed
            )
            return None
        endpoint = self.by_id.get(rec.stream_id)
        if endpoint is None:
            return None
        if isinstance(event, WebhookEndpointUpdated):
            endpoint.url, endpoint.events, endpoint.enabled = event.url, list(event.events), event.enabled
            return None if event.enabled else rec.stream_id
        if isinstance(event, WebhookSecretRotated):
            endpoint.secret_sealed = event.secret_sealed
            endpoint.previous_sealed = event.previous_sealed
            endpoint.previous_expires_at = event.previous_expires_at
        elif isinstance(event, WebhookEndpointDeleted):
            endpoint.deleted = True
            return rec.stream_id
        return None

    def of(self, user_id: uuid.UUID, kind: str) -> list[uuid.UUID]:
        return [
            endpoint_id
            for endpoint_id, e in self.by_id.items()
            if e.user_id == user_id and e.enabled and not e.deleted and kind in e.events
        ]


def kind_of(event: object) -> str | None:
    if isinstance(event, JobDispatched):
        return "start"
    if isinstance(event, JobCompleted | JobFailed | JobCancelled):
        return "completed"
    return None


def message_id(target: str, cause: str) -> str:
    """The webhook-id: derived from what caused the message, so it is the same however often the
    message is made again (after a restart) or tried again."""
    return "msg_" + uuid.uuid5(NAMESPACE, f"{target}:{cause}").hex


@dataclass(frozen=True)
class Submitted:
    """What a job's JobSubmitted says of who hears about it."""

    user_id: uuid.UUID
    kinds: tuple[str, ...]  # what its own webhook asked for; () without one


class Intake:
    def __init__(self, endpoints: Endpoints, base_url: str, links: LinkSigner) -> None:
        self.endpoints = endpoints
        self.base_url = base_url
        self.links = links
        # The unfinished jobs submitted since this service started reading: whether anyone listens
        # to one is known without reading its stream (most jobs have no receiver at all).
        self.submitted: dict[uuid.UUID, Submitted] = {}

    def note(self, job_id: uuid.UUID, event: JobSubmitted) -> None:
        kinds = tuple(event.webhook_events or KINDS) if event.webhook else ()
        self.submitted[job_id] = Submitted(event.user_id, kinds)

    def nobody_hears(self, job_id: uuid.UUID, kind: str) -> bool:
        """True when the job's submit was read here and neither its webhook nor an endpoint of its
        owner wants `kind` (False when unknown: the job's stream is read to decide)."""
        known = self.submitted.get(job_id)
        if kind == "completed":
            self.submitted.pop(job_id, None)  # its last event: forget it
        return known is not None and kind not in known.kinds and not self.endpoints.of(known.user_id, kind)

    def body(self, kind: str, job: Job, records: list[RecordedEvent], at: datetime, **extra: object) -> bytes:
        view = job_view(job, records, self.base_url, None, None, self.links)
        payload = {"type": f"job.{kind}", "timestamp": at, "data": view.model_dump(mode="json"), **extra}
        return msgspec.json.encode(payload)

    def messages(
        self, kind: str, records: list[RecordedEvent], cause: str, at: datetime, **extra: object
    ) -> list[NewMessage]:
        """The messages one job event (or progress report) makes; `records` are the job's events up to it."""
        job = fold(records)
        first = records[0].data
        if job is None or not isinstance(first, JobSubmitted):
            return []
        targets: list[tuple[str, str | None]] = [(str(e), None) for e in self.endpoints.of(job.user_id, kind)]
        if first.webhook and kind in (first.webhook_events or KINDS):
            targets.append((f"job:{job.id}", first.webhook))
        if not targets:
            return []
        body = self.body(kind, job, records, at, **extra)
        return [
            NewMessage(
                id=message_id(target, cause),
                target=target,
                user_id=job.user_id,
                url=url,
                job_id=job.id,
                event_type=f"job.{kind}",
                body=body,
                created_at=at,
            )
            for target, url in targets
        ]
