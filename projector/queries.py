"""Reads of the projector's read models, for the gateway, the scheduler and the operator's commands.

The projector owns the tables `plans`, `users`, `api_keys`, `frontend_keys`, `jobs`, `job_queue`
(and the view `queue_depth`), `artifacts`, `uploads`, `usage_daily`, `model_stats` and
`projection_position`. It writes them in `projector/folds.py` alone; everything that reads them
reads them here. A job's own history comes from the event store (`job_events`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import date, datetime
from typing import Any

import asyncpg

from events import store


async def api_key(conn: asyncpg.Connection, key_hash: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT user_id, key_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", key_hash
    )


async def frontend_key(conn: asyncpg.Connection, key_hash: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT frontend, bot_id, key_id FROM frontend_keys WHERE key_hash = $1 AND revoked_at IS NULL", key_hash
    )


async def uploads_of(conn: asyncpg.Connection, user_id: uuid.UUID) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT id, content_type, size_bytes, duration_seconds, created_at, expires_at"
            " FROM uploads WHERE user_id = $1 AND deleted_at IS NULL AND expired_at IS NULL"
            " AND expires_at > now() ORDER BY created_at DESC LIMIT 500",
            user_id,
        )
    )


async def keys_of(conn: asyncpg.Connection, user_id: uuid.UUID) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT key_id, prefix, label, created_at, revoked_at FROM api_keys WHERE user_id = $1"
            " ORDER BY created_at, key_id",
            user_id,
        )
    )


async def jobs_of(
    conn: asyncpg.Connection,
    user_id: uuid.UUID,
    limit: int,
    before: datetime | None,
    status: str | None,
    capability: str | None = None,
) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT id, status, capability, model, cost_tokens, frontend, bot_id, worker_id, created_at, ended_at,"
            " error, params->>'prompt' AS prompt"
            " FROM jobs WHERE user_id = $1 AND ($2::timestamptz IS NULL OR created_at < $2)"
            " AND ($3::text IS NULL OR status = $3) AND ($5::text IS NULL OR capability = $5)"
            " ORDER BY created_at DESC, id LIMIT $4",
            user_id,
            before,
            status,
            limit,
            capability,
        )
    )


async def artifact(conn: asyncpg.Connection, artifact_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, job_id, user_id, type, format, content_type, object_name, inline_text, file_size_bytes, expires_at,"
        " expired_at FROM artifacts WHERE id = $1",
        artifact_id,
    )


async def user(conn: asyncpg.Connection, user_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, platform, platform_user_id, plan_tier, display_name, created_at FROM users WHERE id = $1", user_id
    )


async def plans(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT tier, name, daily_token_limit, requests_per_minute, max_concurrent_jobs, max_queued_jobs, priority,"
            " max_resolution, allowed_models, price_cents, billing_period, description, uploads_per_day,"
            " upload_bytes_per_day, max_upload_bytes FROM plans WHERE active"
            " ORDER BY priority"
        )
    )


async def plan(conn: asyncpg.Connection, tier: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT tier, name, daily_token_limit, requests_per_minute, max_concurrent_jobs, max_queued_jobs, priority,"
        " max_resolution, allowed_models, price_cents, uploads_per_day, upload_bytes_per_day, max_upload_bytes"
        " FROM plans WHERE tier = $1",
        tier,
    )


async def usage_on(conn: asyncpg.Connection, user_id: uuid.UUID, day: date) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT tokens_used, jobs_completed, jobs_failed, tokens_image, tokens_video, tokens_text, tokens_audio"
        " FROM usage_daily WHERE user_id = $1 AND date = $2",
        user_id,
        day,
    )


async def unfinished(conn: asyncpg.Connection, user_id: uuid.UUID, day: date) -> dict[str, Any]:
    """The user's queued and running jobs, and the tokens they hold on `day`'s quota."""
    row = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE status = 'QUEUED') AS queued, count(*) FILTER (WHERE status = 'RUNNING')"
        " AS running, coalesce(sum(reserved_tokens) FILTER (WHERE quota_day = $2), 0) AS reserved"
        " FROM jobs WHERE user_id = $1 AND status IN ('QUEUED', 'RUNNING')",
        user_id,
        day,
    )
    return {"queued": row["queued"], "running": row["running"], "reserved": float(row["reserved"])}


async def job_events(conn: asyncpg.Connection, job_id: uuid.UUID, after_version: int = 0) -> list[Any]:
    return await store.load_stream(conn, job_id, after_version)


async def wait_for_projection(pool: asyncpg.Pool, seq: int | None = None, timeout: float = 3.0) -> bool:
    """Wait until the read models include event `seq` (default: the newest event now)."""
    deadline = time.monotonic() + timeout
    async with pool.acquire() as conn:
        target = seq if seq is not None else await store.head(conn)
        while True:
            position = await conn.fetchval("SELECT seq FROM projection_position WHERE name = 'read_models'")
            if position >= target:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)


async def expired_artifacts(
    conn: asyncpg.Connection, limit: int = 500
) -> list[tuple[uuid.UUID, uuid.UUID, str | None]]:
    """Artifacts past their expiry whose expiry is not recorded yet (the event log decides, not the
    read model, so a lagging projector cannot cause a second event)."""
    rows = await conn.fetch(
        "SELECT a.id, a.job_id, a.object_name FROM artifacts a WHERE a.expires_at < now()"
        " AND NOT EXISTS (SELECT 1 FROM events e WHERE e.stream_id = a.id) ORDER BY a.expires_at LIMIT $1",
        limit,
    )
    return [(r["id"], r["job_id"], r["object_name"]) for r in rows]


async def expired_uploads(conn: asyncpg.Connection, limit: int = 500) -> list[tuple[uuid.UUID, str, int]]:
    """Uploads past their expiry whose stream holds nothing after their storing (not deleted, not
    expired yet, by the event log): (id, object name, stream version)."""
    rows = await conn.fetch(
        "SELECT u.id, u.object_name FROM uploads u WHERE u.expires_at < now() AND u.deleted_at IS NULL"
        " AND u.expired_at IS NULL AND NOT EXISTS (SELECT 1 FROM events e WHERE e.stream_id = u.id AND e.version > 1)"
        " ORDER BY u.expires_at LIMIT $1",
        limit,
    )
    return [(r["id"], r["object_name"], 1) for r in rows]


# --- for the operator's commands ---------------------------------------------------------------


async def user_keys(conn: asyncpg.Connection, user_id: uuid.UUID) -> list[asyncpg.Record]:
    """A user's API keys (never the keys themselves), oldest first."""
    return list(
        await conn.fetch(
            "SELECT key_id, prefix, label, created_at, revoked_at FROM api_keys WHERE user_id = $1 ORDER BY created_at",
            user_id,
        )
    )


async def all_frontend_keys(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every frontend key (never the keys themselves), by frontend and bot."""
    return list(
        await conn.fetch(
            "SELECT key_id, prefix, frontend, bot_id, created_at, revoked_at"
            " FROM frontend_keys ORDER BY frontend, bot_id NULLS FIRST, created_at"
        )
    )


async def api_key_owner(conn: asyncpg.Connection, key_id: uuid.UUID) -> asyncpg.Record | None:
    """The user (`user_id`) whose API key `key_id` is, revoked or not."""
    return await conn.fetchrow("SELECT user_id FROM api_keys WHERE key_id = $1", key_id)


async def frontend_key_owner(conn: asyncpg.Connection, key_id: uuid.UUID) -> asyncpg.Record | None:
    """The frontend and bot (`frontend`, `bot_id`) whose key `key_id` is, revoked or not."""
    return await conn.fetchrow("SELECT frontend, bot_id FROM frontend_keys WHERE key_id = $1", key_id)


async def all_plans(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every plan, retired ones included, by priority."""
    return list(
        await conn.fetch(
            "SELECT tier, name, priority, daily_token_limit, requests_per_minute,"
            " max_concurrent_jobs, max_queued_jobs, max_resolution, allowed_models, price_cents"
            " FROM plans ORDER BY priority, tier"
        )
    )


_WEBHOOK_COLUMNS = (
    "id, user_id, url, events, description, enabled, disabled_reason, secret_sealed, previous_sealed,"
    " previous_expires_at, created_at, updated_at"
)


async def webhooks_of(conn: asyncpg.Connection, user_id: uuid.UUID) -> list[asyncpg.Record]:
    """A user's webhook endpoints, oldest first."""
    return list(
        await conn.fetch(
            f"SELECT {_WEBHOOK_COLUMNS} FROM webhook_endpoints WHERE user_id = $1 ORDER BY created_at, id", user_id
        )
    )


async def webhook(conn: asyncpg.Connection, webhook_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {_WEBHOOK_COLUMNS} FROM webhook_endpoints WHERE id = $1", webhook_id
    )
    return row


async def jobs_since(conn: asyncpg.Connection, since: datetime) -> dict[str, int]:
    """How many jobs submitted since `since` are in each status (`tessera status`: today's jobs)."""
    rows = await conn.fetch("SELECT status, count(*) AS n FROM jobs WHERE created_at >= $1 GROUP BY status", since)
    return {r["status"]: int(r["n"]) for r in rows}


async def unfinished_jobs(conn: asyncpg.Connection, user_id: uuid.UUID, limit: int) -> list[uuid.UUID]:
    """The user's jobs not yet in a terminal state, oldest first."""
    rows = await conn.fetch(
        "SELECT id FROM jobs WHERE user_id = $1 AND status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')"
        " ORDER BY created_at LIMIT $2",
        user_id,
        limit,
    )
    return [r["id"] for r in rows]


async def projected_seq(conn: asyncpg.Connection) -> int:
    """The log position the read models include (read it in the same snapshot as the rows it explains)."""
    return int(await conn.fetchval("SELECT seq FROM projection_position WHERE name = 'read_models'"))


async def queue_orders(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every waiting job's (capability, priority, enqueued_seq), in queue order: the snapshot a
    gateway computes positions from, at most once a second (`gateway/queue_view.py`)."""
    return list(
        await conn.fetch(
            "SELECT capability, priority, enqueued_seq FROM job_queue ORDER BY capability, priority DESC, enqueued_seq"
        )
    )


async def model_completions(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Each model's completed jobs and their total execution time, so far (a gateway's service rates)."""
    return list(await conn.fetch("SELECT model, jobs_completed, total_execution_seconds FROM model_stats"))
