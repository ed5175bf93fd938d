"""Event types, declared once as versioned msgspec structs.

Schema evolution rules (msgspec's): a new field gets a default, no field changes type, and a
breaking change is a new event type with the next version in its tag (`JobSubmitted.v2`).
`tests/unit/test_event_samples.py` decodes an encoded sample of every type ever stored.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Any

import msgspec

# Namespace for ids derived from names (users, plans, frontends): the same name, the same id.
NAMESPACE = uuid.UUID("6f3c1d0e-6b7a-4c55-9e4b-746573736572")


def user_stream_id(platform: str, platform_user_id: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"user:{platform}:{platform_user_id}")


def plan_stream_id(tier: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"plan:{tier}")


def frontend_stream_id(frontend: str, bot_id: str | None) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"frontend:{frontend}:{bot_id or ''}")


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every event. The tag (`type`) names the event and its schema version."""


# --- jobs -----------------------------------------------------------------------------------


class Artifact(msgspec.Struct, frozen=True, kw_only=True):
    """An output of a job. Small text lives inline (`text`); anything else in the object store."""

    id: uuid.UUID
    kind: str  # image | video | audio | text
    format: str
    content_type: str
    size_bytes: int
    object_name: str | None = None
    text: str | None = None
    width: int | None = None
    height: int | None = None
    duration_seconds: float | None = None
    expires_at: datetime | None = None


class JobSubmitted(Event, frozen=True, kw_only=True, tag="JobSubmitted.v1"):
    user_id: uuid.UUID
    user_ref: str | None = None
    frontend: str
    bot_id: str | None = None
    capability: str
    model: str
    params: dict[str, Any]
    priority: int
    cost_tokens: float
    reply_context: dict[str, Any] | None = None
    request_digest: str | None = None  # of the submit, to refuse an Idempotency-Key reused with another body
    webhook: str | None = None  # per-job webhook URL (docs/webhooks.md)
    webhook_events: list[str] | None = None


class JobQueued(Event, frozen=True, kw_only=True, tag="JobQueued.v1"):
    """Admitted. `reserved_tokens` (the job's maximum cost) are held against the user's quota
    for `quota_day` until the job ends, when they are charged or released."""

    priority: int
    reason: str = "admitted"
    reserved_tokens: float = 0.0
    quota_day: date | None = None


class JobDispatched(Event, frozen=True, kw_only=True, tag="JobDispatched.v1"):
    worker_id: str
    attempt: int
    reason: str


class JobStarted(Event, frozen=True, kw_only=True, tag="JobStarted.v1"):
    worker_id: str
    attempt: int


class JobCompleted(Event, frozen=True, kw_only=True, tag="JobCompleted.v1"):
    """Done. `cost_tokens` is the charge (the measured use, never above the reservation); the
    rest of `reserved_tokens` is released."""

    worker_id: str
    attempt: int
    artifacts: list[Artifact]
    execution_time_seconds: float
    cost_tokens: float
    reserved_tokens: float = 0.0
    quota_day: date | None = None
    usage: dict[str, float] = {}  # what the worker measured (output_tokens, audio_seconds, ...)
    started_at: datetime | None = None  # the worker's start time when no JobStarted preceded it


class JobFailed(Event, frozen=True, kw_only=True, tag="JobFailed.v1"):
    """Failed; its whole reservation is released (a failed job costs nothing)."""

    code: str
    message: str
    worker_id: str | None = None
    attempt: int | None = None
    released_tokens: float = 0.0
    quota_day: date | None = None
    started_at: datetime | None = None  # the worker's start time when no JobStarted preceded it


class JobCancelled(Event, frozen=True, kw_only=True, tag="JobCancelled.v1"):
    """Cancelled; its whole reservation is released."""

    reason: str
    requested_by: str  # "user" or "system"
    released_tokens: float = 0.0
    quota_day: date | None = None


class JobRequeued(Event, frozen=True, kw_only=True, tag="JobRequeued.v1"):
    """A running attempt was lost (its worker died); the job waits for a new attempt."""

    worker_id: str
    attempt: int
    reason: str


JobEvent = JobSubmitted | JobQueued | JobDispatched | JobStarted | JobCompleted | JobFailed | JobCancelled | JobRequeued

# --- users, plans, frontends ----------------------------------------------------------------


class UserRegistered(Event, frozen=True, kw_only=True, tag="UserRegistered.v1"):
    platform: str
    platform_user_id: str
    plan: str
    display_name: str | None = None


class ApiKeyIssued(Event, frozen=True, kw_only=True, tag="ApiKeyIssued.v1"):
    key_id: uuid.UUID
    key_hash: str
    prefix: str
    label: str | None = None


class ApiKeyRevoked(Event, frozen=True, kw_only=True, tag="ApiKeyRevoked.v1"):
    """A user's key stops working: revoked by its user, by an operator, or replaced by a rotation."""

    key_id: uuid.UUID
    revoked_by: str  # user | operator
    reason: str | None = None


class UserPlanChanged(Event, frozen=True, kw_only=True, tag="UserPlanChanged.v1"):
    """An operator moved the user to another plan; it applies from the next admission on."""

    plan: str
    previous_plan: str
    changed_by: str = "operator"


class PlanDefined(Event, frozen=True, kw_only=True, tag="PlanDefined.v1"):
    tier: str
    name: str
    daily_token_limit: int | None  # None: unlimited
    requests_per_minute: int
    max_concurrent_jobs: int
    max_queued_jobs: int
    priority: int
    max_resolution: int
    allowed_models: list[str]
    price_cents: int = 0
    description: str | None = None
    # Uploads (issue 11); None: no limit of the plan's own (the platform's size limit still holds).
    uploads_per_day: int | None = None
    upload_bytes_per_day: int | None = None
    max_upload_bytes: int | None = None


class FrontendKeyIssued(Event, frozen=True, kw_only=True, tag="FrontendKeyIssued.v1"):
    frontend: str
    bot_id: str | None = None
    key_id: uuid.UUID
    key_hash: str
    prefix: str


class FrontendKeyRevoked(Event, frozen=True, kw_only=True, tag="FrontendKeyRevoked.v1"):
    key_id: uuid.UUID
    revoked_by: str = "operator"
    reason: str | None = None


class UploadStored(Event, frozen=True, kw_only=True, tag="UploadStored.v1"):
    """A user's input file, counted against its plan's uploads of `quota_day`. Stream: the upload's id."""

    user_id: uuid.UUID
    object_name: str
    content_type: str
    size_bytes: int
    duration_seconds: float | None = None
    bits_per_sample: int | None = None
    quota_day: date
    expires_at: datetime


class UploadDeleted(Event, frozen=True, kw_only=True, tag="UploadDeleted.v1"):
    """Its owner deleted it; its bytes were removed from the object store."""

    user_id: uuid.UUID
    object_name: str


class UploadExpired(Event, frozen=True, kw_only=True, tag="UploadExpired.v1"):
    object_name: str
    expired_at: datetime


class ArtifactExpired(Event, frozen=True, kw_only=True, tag="ArtifactExpired.v1"):
    """An artifact passed its expiry; its bytes were removed from the object store. Stream: the artifact's id."""

    job_id: uuid.UUID
    object_name: str | None = None
    expired_at: datetime


# --- webhook endpoints (docs/webhooks.md); stream: the endpoint's id ----------------------------


class WebhookEndpointCreated(Event, frozen=True, kw_only=True, tag="WebhookEndpointCreated.v1"):
    """A user's webhook endpoint. `secret_sealed` is its signing secret sealed with the deployment's
    key (gateway.webhook_secrets), never the secret itself."""

    user_id: uuid.UUID
    url: str
    events: list[str]
    description: str | None = None
    secret_sealed: str


class WebhookEndpointUpdated(Event, frozen=True, kw_only=True, tag="WebhookEndpointUpdated.v1"):
    """The endpoint as it is now (every field); `disabled_reason` says why it stopped, and who stopped it."""

    url: str
    events: list[str]
    description: str | None = None
    enabled: bool
    disabled_reason: str | None = None
    by: str = "user"  # user | delivery (the webhook service: 410 Gone, or failing for days)


class WebhookSecretRotated(Event, frozen=True, kw_only=True, tag="WebhookSecretRotated.v1"):
    """A new secret signs from now on; the previous one signs beside it until `previous_expires_at`."""

    secret_sealed: str
    previous_sealed: str
    previous_expires_at: datetime


class WebhookEndpointDeleted(Event, frozen=True, kw_only=True, tag="WebhookEndpointDeleted.v1"):
    user_id: uuid.UUID


WebhookEvent = WebhookEndpointCreated | WebhookEndpointUpdated | WebhookSecretRotated | WebhookEndpointDeleted


AnyEvent = (
    JobEvent
    | UserRegistered
    | ApiKeyIssued
    | ApiKeyRevoked
    | UserPlanChanged
    | PlanDefined
    | FrontendKeyIssued
    | FrontendKeyRevoked
    | ArtifactExpired
    | UploadStored
    | UploadDeleted
    | UploadExpired
    | WebhookEvent
)


class StreamType(StrEnum):
    """The kinds of event stream (the `stream_type` of a stored event): one per aggregate."""

    JOB = "job"
    USER = "user"
    PLAN = "plan"
    FRONTEND = "frontend"
    ARTIFACT = "artifact"
    UPLOAD = "upload"
    WEBHOOK = "webhook"


class RecordedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event as stored: its place in its stream (`version`) and in the log (`seq`)."""

    seq: int
    event_id: uuid.UUID
    stream_type: str
    stream_id: uuid.UUID
    version: int
    recorded_at: datetime
    causation_id: str | None
    data: AnyEvent

    @property
    def type(self) -> str:
        return type_name(type(self.data))


def type_name(cls: type[Event]) -> str:
    """The stored `type` of an event class (its tag, such as `JobCompleted.v1`): SQL and code that
    select events by type take it from here rather than spelling it by hand."""
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str), f"{cls.__name__} has no tag"
    return tag


def event_type(event: Event) -> str:
    return type_name(type(event))


_encoder = msgspec.json.Encoder()
_data_decoder = msgspec.json.Decoder(AnyEvent)
_recorded_decoder = msgspec.json.Decoder(RecordedEvent)


def encode(value: object) -> bytes:
    return _encoder.encode(value)


def decode_data(raw: bytes | str) -> AnyEvent:
    return _data_decoder.decode(raw)


def decode_recorded(raw: bytes | str) -> RecordedEvent:
    return _recorded_decoder.decode(raw)
