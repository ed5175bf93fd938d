"""All SQL of the webhook service: its position in the event log, its messages and their attempts
(tables `webhook_position`, `webhook_messages`, `webhook_attempts`, migration 0010)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from streams.webhook_messages import Delivery, DeliveryAttempt


@dataclass(frozen=True)
class NewMessage:
    id: str
    target: str  # an endpoint's id, or 'job:<job id>'
    user_id: uuid.UUID
    url: str | None  # a per-job webhook's URL; an endpoint's is looked up when sending
    job_id: uuid.UUID | None
    event_type: str
    body: bytes
    created_at: datetime


@dataclass(frozen=True)
class Due:
    id: str
    target: str
    user_id: uuid.UUID
    url: str | None
    job_id: uuid.UUID | None
    body: bytes
    attempts: int


async def position(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT seq FROM webhook_position WHERE name = 'deliveries'"))


async def add(conn: asyncpg.Connection, messages: list[NewMessage], seq: int | None) -> None:
    """Store new messages (ones already stored are left as they are) and, with `seq`, move the
    position: the caller's transaction makes the two one step."""
    if messages:
        await conn.executemany(
            "INSERT INTO webhook_messages (id, target, user_id, url, job_id, event_type, body, next_attempt_at,"
            " created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) ON CONFLICT (id) DO NOTHING",
            [(m.id, m.target, m.user_id, m.url, m.job_id, m.event_type, m.body, m.created_at) for m in messages],
        )
    if seq is not None:
        await conn.execute("UPDATE webhook_position SET seq = $1 WHERE name = 'deliveries'", seq)


async def due(conn: asyncpg.Connection, now: datetime, limit: int = 100) -> list[Due]:
    rows = await conn.fetch(
        "SELECT id, target, user_id, url, job_id, body, attempts FROM webhook_messages"
        " WHERE state = 'pending' AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2",
        now,
        limit,
    )
    return [Due(**dict(r)) for r in rows]


async def next_due(conn: asyncpg.Connection) -> datetime | None:
    value: datetime | None = await conn.fetchval(
        "SELECT min(next_attempt_at) FROM webhook_messages WHERE state = 'pending'"
    )
    return value


async def record(
    conn: asyncpg.Connection,
    message_id: str,
    attempt: DeliveryAttempt,
    state: str,
    next_at: datetime | None,
) -> None:
    """One attempt and where it leaves its message, in one transaction."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO webhook_attempts (message_id, attempt, at, status, latency_ms, response_excerpt, error)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            message_id,
            attempt.attempt,
            attempt.at,
            attempt.status,
            attempt.latency_ms,
            attempt.response_excerpt,
            attempt.error,
        )
        await conn.execute(
            "UPDATE webhook_messages SET attempts = $2, state = $3, next_attempt_at = $4 WHERE id = $1",
            message_id,
            attempt.attempt,
            state,
            next_at,
        )


async def cancel_pending(conn: asyncpg.Connection, target: str) -> None:
    """An endpoint disabled or deleted: its messages waiting for a retry are not tried again."""
    await conn.execute(
        "UPDATE webhook_messages SET state = 'cancelled', next_attempt_at = NULL"
        " WHERE target = $1 AND state = 'pending'",
        target,
    )


async def last_success(conn: asyncpg.Connection, target: str) -> datetime | None:
    value: datetime | None = await conn.fetchval(
        "SELECT max(a.at) FROM webhook_attempts a JOIN webhook_messages m ON m.id = a.message_id"
        " WHERE m.target = $1 AND a.status BETWEEN 200 AND 299",
        target,
    )
    return value


async def replay(conn: asyncpg.Connection, target: str, message_id: str, now: datetime) -> str | None:
    """Make a message due now (its attempts go on counting); None when the target has no such message."""
    state: str | None = await conn.fetchval(
        "UPDATE webhook_messages SET state = 'pending', next_attempt_at = $3"
        " WHERE id = $2 AND target = $1 RETURNING state",
        target,
        message_id,
        now,
    )
    return state


async def deliveries(conn: asyncpg.Connection, target: str, limit: int) -> list[Delivery]:
    rows = await conn.fetch(
        "SELECT id, event_type, job_id, state, created_at, next_attempt_at FROM webhook_messages"
        " WHERE target = $1 ORDER BY created_at DESC, id LIMIT $2",
        target,
        limit,
    )
    attempts = await conn.fetch(
        "SELECT message_id, attempt, at, status, latency_ms, response_excerpt, error FROM webhook_attempts"
        " WHERE message_id = ANY($1::text[]) ORDER BY attempt",
        [r["id"] for r in rows],
    )
    by_message: dict[str, list[DeliveryAttempt]] = {}
    for a in attempts:
        values = dict(a)
        by_message.setdefault(values.pop("message_id"), []).append(DeliveryAttempt(**values))
    return [
        Delivery(
            message_id=r["id"],
            event_type=r["event_type"],
            job_id=r["job_id"],
            state=r["state"],
            created_at=r["created_at"],
            next_attempt_at=r["next_attempt_at"],
            attempts=by_message.get(r["id"], []),
        )
        for r in rows
    ]
