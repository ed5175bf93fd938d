"""The public API's request and response bodies, declared once.

The gateway's routes answer with these (FastAPI documents and checks them) and `gateway.client`
parses its answers into them, so a frontend (CLI, bot, website) never declares the API again.
This module imports pydantic and nothing of the gateway, so a client stays cheap to import.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, Field

# --- jobs -------------------------------------------------------------------------------------


class JobCreate(BaseModel):
    """A job request. `params.prompt` is required; `params.model` (or `model`) picks a model of the
    capability; images and video take `params.width` and `params.height`, or `params.resolution`."""

    capability: str = Field(
        description="image | video | text | tts (or audio) | stt | echo (diagnostic)", max_length=20
    )
    params: dict[str, Any] = Field(
        description="prompt (required), model, and capability-specific settings; "
        "resolution '1024x1024' is width and height"
    )
    model: str | None = Field(
        default=None, max_length=100, description="The same as params.model; the two may not disagree"
    )
    frontend: str | None = Field(default=None, max_length=20)
    bot_id: str | None = Field(default=None, max_length=64)
    user_ref: str | None = Field(default=None, max_length=120, description="With a frontend key: 'telegram:123'")
    reply_context: dict[str, Any] | None = None


class JobAccepted(BaseModel):
    """A submitted job, accepted and committed (202)."""

    job_id: uuid.UUID
    status: str
    cost_tokens: float
    estimated_time_seconds: float | None
    queue_position: int | None


class ArtifactView(BaseModel):
    """An output of a completed job; its bytes are at `url` (with the owner's key), and at
    `signed_url` with no key at all until `signed_url_expires_at`: a link to hand to someone else."""

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
    signed_url: str | None = None
    signed_url_expires_at: datetime | None = None


class JobView(BaseModel):
    """A job as its events say it stands now."""

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


class JobListItem(BaseModel):
    """One job of a user's list (from the read model)."""

    job_id: uuid.UUID
    status: str
    capability: str
    model: str
    cost_tokens: float
    frontend: str
    bot_id: str | None
    worker_id: str | None
    created_at: datetime
    ended_at: datetime | None
    error: dict[str, Any] | None


class JobList(BaseModel):
    """A page of jobs, newest first; `next_before` asks for the next page when there may be one."""

    jobs: list[JobListItem]
    next_before: datetime | None


class JobCancelled(BaseModel):
    """A cancel the scheduler carried out (or found already done)."""

    job_id: uuid.UUID
    status: str


class EventView(BaseModel):
    """One recorded event of a job's history."""

    seq: int
    version: int
    type: str
    recorded_at: datetime
    causation_id: str | None
    data: dict[str, Any]


# --- a job's server-sent events (/api/v1/jobs/{id}/stream) --------------------------------------


class TransitionEvent(EventView):
    """`event: transition`: an event of the job's history, with the status it led to; its SSE `id`
    is `version`."""

    job_id: uuid.UUID
    status: str


class ProgressEvent(BaseModel):
    """`event: progress`: how far the running attempt has come (not part of the history)."""

    job_id: uuid.UUID
    attempt: int
    fraction: float | None = None
    message: str | None = None
    partial_text: str | None = None


class StatusEvent(BaseModel):
    """`event: status`: where an unfinished job stands now (not part of the history)."""

    job_id: uuid.UUID
    status: str
    queue_position: int | None
    estimated_time_seconds: float | None


StreamEvent = TransitionEvent | ProgressEvent | StatusEvent


# --- uploads ----------------------------------------------------------------------------------


class UploadStored(BaseModel):
    """An upload just stored (201); refer to it from a job as `params.input_upload`."""

    upload_id: uuid.UUID
    content_type: str
    size_bytes: int
    duration_seconds: float | None
    expires_at: datetime


class UploadView(BaseModel):
    """An upload still stored."""

    upload_id: uuid.UUID
    content_type: str
    size_bytes: int
    duration_seconds: float | None
    created_at: datetime
    expires_at: datetime


class UploadList(BaseModel):
    uploads: list[UploadView]


class UploadDeleted(BaseModel):
    upload_id: uuid.UUID
    deleted: bool


# --- keys -------------------------------------------------------------------------------------


class KeyCreate(BaseModel):
    """A new key's label, when creating or rotating one."""

    label: str | None = Field(default=None, max_length=100, description="A name to recognise the key by")


class KeyView(BaseModel):
    """One of the user's API keys (never the key itself); `current` is the key of this request."""

    key_id: uuid.UUID
    prefix: str
    label: str | None
    created_at: datetime
    revoked_at: datetime | None
    current: bool


class KeyList(BaseModel):
    keys: list[KeyView]


class NewKey(BaseModel):
    """A key just issued (201): `key` is shown this once."""

    key_id: uuid.UUID
    key: str
    prefix: str
    label: str | None
    note: str


class KeyRevoked(BaseModel):
    key_id: uuid.UUID
    revoked: bool


# --- plans, the user, models ------------------------------------------------------------------


class PlanTerms(BaseModel):
    """A plan's price and limits; None where the plan has no limit."""

    tier: str
    name: str
    daily_token_limit: int | None
    requests_per_minute: int
    max_concurrent_jobs: int
    max_queued_jobs: int
    priority: int
    max_resolution: int
    allowed_models: list[str]
    price_cents: int
    uploads_per_day: int | None
    upload_bytes_per_day: int | None
    max_upload_bytes: int | None


class PlanView(PlanTerms):
    """A plan on offer (/api/v1/plans)."""

    billing_period: str
    description: str | None


class PlanList(BaseModel):
    plans: list[PlanView]


class UserLimits(BaseModel):
    daily_tokens: int | None
    requests_per_minute: int | None
    max_concurrent_jobs: int | None
    max_queued_jobs: int | None
    max_resolution: int | None
    allowed_models: list[str]
    uploads_per_day: int | None
    upload_bytes_per_day: int | None
    max_upload_bytes: int | None


class QuotaDay(BaseModel):
    """Today's quota: `tokens_reserved` are held by queued and running jobs."""

    date: date
    resets_at: datetime
    tokens_used: float
    tokens_reserved: float
    tokens_remaining: float | None
    tokens_by_capability: dict[str, float]
    jobs_completed: int
    jobs_failed: int


class Me(BaseModel):
    """Who the caller is (or acts for), their plan, its limits and today's quota."""

    user_id: uuid.UUID
    platform: str
    platform_user_id: str
    display_name: str | None
    registered: bool
    plan: PlanTerms | None
    limits: UserLimits
    today: QuotaDay
    jobs_running: int
    jobs_queued: int


class ModelCost(BaseModel):
    base_tokens: float
    tokens_per_unit: float
    unit: str
    default_request_tokens: float


class ModelView(BaseModel):
    """A model, its price, the plans that include it and the workers online that serve it."""

    name: str
    capability: str
    engine: str
    description: str
    diagnostic: bool
    default: bool
    cost: ModelCost
    plans: list[str]
    workers_online: int
    slots_online: int


class ModelList(BaseModel):
    models: list[ModelView]


# --- health -----------------------------------------------------------------------------------


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    """`ready` when NATS and PostgreSQL are reachable (200), `not ready` otherwise (503)."""

    status: str
    checks: dict[str, bool | int]


# --- errors -----------------------------------------------------------------------------------


class ProblemBody(BaseModel, extra="allow"):
    """An error (RFC 9457 application/problem+json) with a stable machine `code`; fields beyond
    these (`errors`, `job_status`, ...) depend on the code."""

    type: str
    title: str
    status: int
    code: str
    detail: str
    instance: str | None = None


# --- prices -------------------------------------------------------------------------------------


class QuoteRequest(BaseModel):
    """What a job would be: the submit body's capability, params and model."""

    capability: str = Field(max_length=20)
    params: dict[str, Any] = Field(default_factory=dict)
    model: str | None = Field(default=None, max_length=100)


class QuoteView(BaseModel):
    """The price of a request before it is sent: the most it can cost (what the quota holds)."""

    capability: str
    model: str
    cost_tokens: float
    width: int | None
    height: int | None
