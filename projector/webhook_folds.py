"""The `webhook_endpoints` read model: users' webhook endpoints as their events leave them.
Called by `projector.folds.apply` inside its transaction, under the projection lock."""

from __future__ import annotations

import asyncpg

from events.types import (
    RecordedEvent,
    WebhookEndpointCreated,
    WebhookEndpointDeleted,
    WebhookEndpointUpdated,
    WebhookSecretRotated,
)


async def apply(conn: asyncpg.Connection, rec: RecordedEvent) -> None:
    event = rec.data
    if isinstance(event, WebhookEndpointCreated):
        await conn.execute(
            "INSERT INTO webhook_endpoints (id, user_id, url, events, description, secret_sealed, created_at,"
            " updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (id) DO NOTHING",
            rec.stream_id,
            event.user_id,
            event.url,
            event.events,
            event.description,
            event.secret_sealed,
            rec.recorded_at,
        )
    elif isinstance(event, WebhookEndpointUpdated):
        await conn.execute(
            "UPDATE webhook_endpoints SET url = $2, events = $3, description = $4, enabled = $5,"
            " disabled_reason = $6, updated_at = $7 WHERE id = $1",
            rec.stream_id,
            event.url,
            event.events,
            event.description,
            event.enabled,
            event.disabled_reason,
            rec.recorded_at,
        )
    elif isinstance(event, WebhookSecretRotated):
        await conn.execute(
            "UPDATE webhook_endpoints SET secret_sealed = $2, previous_sealed = $3, previous_expires_at = $4,"
            " updated_at = $5 WHERE id = $1",
            rec.stream_id,
            event.secret_sealed,
            event.previous_sealed,
            event.previous_expires_at,
            rec.recorded_at,
        )
    elif isinstance(event, WebhookEndpointDeleted):
        await conn.execute("DELETE FROM webhook_endpoints WHERE id = $1", rec.stream_id)
