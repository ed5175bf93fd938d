"""The webhook service's answers to the gateway (core NATS request and reply): an endpoint's
delivery log and a replay (docs/webhooks.md)."""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec


class DeliveriesRequest(msgspec.Struct, frozen=True, kw_only=True):
    webhook_id: uuid.UUID
    limit: int = 50


class DeliveryAttempt(msgspec.Struct, frozen=True, kw_only=True):
    attempt: int
    at: datetime
    status: int | None = None
    latency_ms: int | None = None
    response_excerpt: str | None = None
    error: str | None = None


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    message_id: str
    event_type: str
    job_id: uuid.UUID | None = None
    state: str
    created_at: datetime
    next_attempt_at: datetime | None = None
    attempts: list[DeliveryAttempt] = []


class Deliveries(msgspec.Struct, frozen=True, kw_only=True):
    deliveries: list[Delivery]


class ReplayRequest(msgspec.Struct, frozen=True, kw_only=True):
    webhook_id: uuid.UUID
    message_id: str


class ReplayAnswer(msgspec.Struct, frozen=True, kw_only=True):
    found: bool
    state: str | None = None
