"""The webhook API's request and response bodies (docs/webhooks.md), and the job request with its
per-job webhook fields. Kept apart from `gateway.schemas` so the webhook contract reads in one place."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field, field_validator

from gateway.schemas import JobCreate


class WebhookEvent(StrEnum):
    """What a webhook may be told about a job (Replicate's names): it began running, it made
    progress (at most one every 500 ms), it finished (completed, failed or cancelled)."""

    START = "start"
    PROGRESS = "progress"
    COMPLETED = "completed"


ALL_EVENTS = [WebhookEvent.START, WebhookEvent.PROGRESS, WebhookEvent.COMPLETED]


class JobCreateWithWebhook(JobCreate):
    """A job request; `webhook` is told of the job as it goes, signed as Standard Webhooks says."""

    webhook: str | None = Field(
        default=None, max_length=2000, description="An https URL told of this job (docs/webhooks.md)"
    )
    webhook_events_filter: list[WebhookEvent] | None = Field(
        default=None, max_length=3, description="Which of start, progress, completed to send; all when omitted"
    )


class WebhookCreate(BaseModel):
    url: str = Field(max_length=2000, description="https URL the deliveries are POSTed to")
    events: list[WebhookEvent] = Field(default_factory=lambda: list(ALL_EVENTS), min_length=1, max_length=3)
    description: str | None = Field(default=None, max_length=200)


class WebhookUpdate(BaseModel):
    """Only the fields given change; `enabled: true` re-enables an endpoint the service disabled."""

    url: str | None = Field(default=None, max_length=2000)
    events: list[WebhookEvent] | None = Field(default=None, min_length=1, max_length=3)
    description: str | None = Field(default=None, max_length=200)
    enabled: bool | None = Field(default=None, strict=True)


class WebhookRotate(BaseModel):
    grace_seconds: int = Field(
        default=86400, ge=0, le=7 * 86400, description="How long the old secret keeps signing beside the new one"
    )

    @field_validator("grace_seconds", mode="before")
    @classmethod
    def _a_json_number(cls, value: object) -> object:
        """A number as JSON writes one (2.0 too), not `true` or "60", which pydantic would also read."""
        if isinstance(value, bool | str):
            raise ValueError("grace_seconds must be an integer")
        return value


class WebhookView(BaseModel):
    webhook_id: uuid.UUID
    url: str
    events: list[str]
    description: str | None
    enabled: bool
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime
    previous_secret_expires_at: datetime | None


class WebhookList(BaseModel):
    webhooks: list[WebhookView]


class WebhookWithSecret(WebhookView):
    """An endpoint as created or rotated: its signing secret is shown this once."""

    secret: str = Field(description="whsec_ and base64: the Standard Webhooks signing secret")


class WebhookDeleted(BaseModel):
    webhook_id: uuid.UUID
    deleted: bool


class JobWebhookSecret(BaseModel):
    """The secret that signs the webhooks of jobs submitted with a `webhook` URL (one per user)."""

    secret: str


class DeliveryAttemptView(BaseModel):
    attempt: int
    at: datetime
    status: int | None = Field(description="the HTTP status; none when no answer came")
    latency_ms: int | None
    response_excerpt: str | None
    error: str | None


class DeliveryView(BaseModel):
    message_id: str = Field(description="the webhook-id header: the same on every attempt")
    event_type: str
    job_id: uuid.UUID | None
    state: str = Field(description="pending | delivered | failed")
    created_at: datetime
    next_attempt_at: datetime | None
    attempts: list[DeliveryAttemptView]


class DeliveryList(BaseModel):
    deliveries: list[DeliveryView]


class Replayed(BaseModel):
    message_id: str
    state: str
