"""All SQL the gateway runs: reads of the read models and of the event store."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import date, datetime
from typing import Any

import asyncpg

from events import store
from base import catalog


async def api_key(conn: asyncpg.Connection, key_hash: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT user_id, key_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
                               key_hash)


async def frontend_key(conn: asyncpg.Connection, key_hash: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT frontend, bot_id, key_id FROM frontend_keys"
                               " WHERE key_hash = $1 AND revoked_at IS NULL", key_hash)


async def uploads_of(conn: asyncpg.Connection, user_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT id, content_type, size_bytes, duration_seconds, created_at, expires_at"
                            " FROM uploads WHERE user_id = $1 AND deleted_at IS NULL AND expired_at IS NULL"
                            " AND expires_at > now() ORDER BY created_at DESC LIMIT 500", user_id)


async def keys_of(conn: asyncpg.Connection, user_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT key_id, prefix, label, created_at, revoked_at FROM api_keys WHERE user_id = $1"
                            " ORDER BY created_at, key_id", user_id)


async def jobs_of(conn: asyncpg.Connection, user_id: uuid.UUID, limit: int, before: datetime | None,
                  status: str | None) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, status, capability, model, cost_tokens, frontend, bot_id, worker_id, created_at, ended_at, error"
        " FROM jobs WHERE user_id = $1 AND ($2::timestamptz IS NULL OR created_at < $2)"
        " AND ($3::text IS NULL OR status = $3) ORDER BY created_at DESC, id LIMIT $4",
        user_id, before, status, limit)


async def queue_position(conn: asyncpg.Connection, capability: str, priority: int, queued_seq: int) -> int:
    return int(await conn.fetchval(
        "SELECT count(*) FROM job_queue WHERE capability = $1"
        " AND (priority > $2 OR (priority = $2 AND enqueued_seq < $3))", capability, priority, queued_seq))


async def artifact(conn: asyncpg.Connection, artifact_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, job_id, user_id, type, format, content_type, object_name, inline_text, file_size_bytes, expires_at,"
        " expired_at FROM artifacts WHERE id = $1", artifact_id)


async def user(conn: asyncpg.Connection, user_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, platform, platform_user_id, plan_tier, display_name, created_at FROM users WHERE id = $1", user_id)


async def plans(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT tier, name, daily_token_limit, requests_per_minute, max_concurrent_jobs, max_queued_jobs, priority,"
        " max_resolution, allowed_models, price_cents, billing_period, description, uploads_per_day,"
        " upload_bytes_per_day, max_upload_bytes FROM plans WHERE active"
        " ORDER BY priority")


async def plan(conn: asyncpg.Connection, tier: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT tier, name, daily_token_limit, requests_per_minute, max_concurrent_jobs, max_queued_jobs, priority,"
        " max_resolution, allowed_models, price_cents, uploads_per_day, upload_bytes_per_day, max_upload_bytes"
        " FROM plans WHERE tier = $1", tier)


async def usage_on(conn: asyncpg.Connection, user_id: uuid.UUID, day: date) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT tokens_used, jobs_completed, jobs_failed, tokens_image, tokens_video, tokens_text, tokens_audio"
        " FROM usage_daily WHERE user_id = $1 AND date = $2", user_id, day)


async def unfinished(conn: asyncpg.Connection, user_id: uuid.UUID, day: date) -> dict[str, Any]:
    """The user's queued and running jobs, and the tokens they hold on `day`'s quota."""
    row = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE status = 'QUEUED') AS queued, count(*) FILTER (WHERE status = 'RUNNING')"
        " AS running, coalesce(sum(reserved_tokens) FILTER (WHERE quota_day = $2), 0) AS reserved"
        " FROM jobs WHERE user_id = $1 AND status IN ('QUEUED', 'RUNNING')", user_id, day)
    return {"queued": row["queued"], "running": row["running"], "reserved": float(row["reserved"])}


async def typical_seconds(conn: asyncpg.Connection, model: str) -> float:
    """The model's mean measured execution time; the catalog's guess until one has completed."""
    row = await conn.fetchrow("SELECT jobs_completed, total_execution_seconds FROM model_stats WHERE model = $1",
                              model)
    if row and row["jobs_completed"]:
        return round(float(row["total_execution_seconds"]) / row["jobs_completed"], 3)
    found = catalog.CATALOG.get(model)
    return found.typical_seconds if found else 5.0


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
