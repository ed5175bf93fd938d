"""All SQL that writes the read models: apply a batch of recorded events, in log order, idempotently.

The projector's tables are listed in `projector/queries.py`, which holds their reads; this module
alone writes them, under the projection lock (`lock`).

Jobs are folded with the same `events.job.evolve` the scheduler decides with. A job whose
events arrive with a hole in their versions (a lost relay message) is completed from the event
store first, so the read models never skip a transition.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec

from base.catalog import USAGE_GROUP
from events import store
from events.job import Job, JobStatus, evolve
from events.types import (
    ApiKeyIssued,
    ApiKeyRevoked,
    ArtifactExpired,
    FrontendKeyIssued,
    FrontendKeyRevoked,
    JobCompleted,
    JobFailed,
    JobQueued,
    JobRequeued,
    PlanDefined,
    RecordedEvent,
    StreamType,
    UploadDeleted,
    UploadExpired,
    UploadStored,
    UserPlanChanged,
    UserRegistered,
)
from projector import webhook_folds

READ_MODEL_TABLES = (
    "plans",
    "users",
    "api_keys",
    "frontend_keys",
    "jobs",
    "job_queue",
    "artifacts",
    "usage_daily",
    "model_stats",
    "uploads",
    "webhook_endpoints",
)

# The jobs read model's columns, each with the array type its values travel in. A batch of jobs
# is written by one statement over unnest() of one array per column: PostgreSQL plans and runs
# it once for the whole batch, where one statement per row costs a round of parsing, binding
# and executing each.
_JOB_COLUMN_TYPES = {
    "id": "uuid",
    "version": "int4",
    "status": "text",
    "user_id": "uuid",
    "user_ref": "text",
    "frontend": "text",
    "bot_id": "text",
    "capability": "text",
    "model": "text",
    "params": "jsonb",
    "priority": "int4",
    "cost_tokens": "float8",
    "reserved_tokens": "float8",
    "quota_day": "date",
    "reply_context": "jsonb",
    "worker_id": "text",
    "attempt": "int4",
    "created_at": "timestamptz",
    "queued_at": "timestamptz",
    "started_at": "timestamptz",
    "ended_at": "timestamptz",
    "execution_time_seconds": "float8",
    "error": "jsonb",
    "last_seq": "int8",
}
_JOB_COLUMNS = tuple(_JOB_COLUMN_TYPES)
_JSON_COLUMNS = frozenset(c for c, t in _JOB_COLUMN_TYPES.items() if t == "jsonb")
_json = msgspec.json.Encoder()


def _unnest_insert(table: str, columns: dict[str, str]) -> str:
    """INSERT INTO table (columns) SELECT ... FROM unnest($1::type[], ...): one array per column.

    jsonb values travel as text and are cast on the way in."""
    arrays = ", ".join(f"${i + 1}::{'text' if t == 'jsonb' else t}[]" for i, t in enumerate(columns.values()))
    select = ", ".join(f"{c}::jsonb" if t == "jsonb" else c for c, t in columns.items())
    names = ", ".join(columns)
    return f"INSERT INTO {table} ({names}) SELECT {select} FROM unnest({arrays}) AS u({names})"


_UPSERT_JOBS = (
    _unnest_insert("jobs", _JOB_COLUMN_TYPES)
    + f" ON CONFLICT (id) DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in _JOB_COLUMNS[1:])}"
)

_ARTIFACT_COLUMN_TYPES = {
    "id": "uuid",
    "job_id": "uuid",
    "user_id": "uuid",
    "type": "text",
    "format": "text",
    "content_type": "text",
    "object_name": "text",
    "inline_text": "text",
    "width": "int4",
    "height": "int4",
    "duration_seconds": "float8",
    "file_size_bytes": "int8",
    "expires_at": "timestamptz",
    "created_at": "timestamptz",
}
_INSERT_ARTIFACTS = _unnest_insert("artifacts", _ARTIFACT_COLUMN_TYPES) + " ON CONFLICT (id) DO NOTHING"


def _job_arrays(jobs: list[Job]) -> list[list[object]]:
    """One list per column of `jobs`, in column order, for `_UPSERT_JOBS`."""
    arrays = []
    for column in _JOB_COLUMNS:
        values = [getattr(job, column) for job in jobs]
        if column in _JSON_COLUMNS:
            values = [None if v is None else _json.encode(v).decode() for v in values]
        arrays.append(values)
    return arrays


def job_from_row(row: asyncpg.Record) -> Job:
    values = dict(row)
    values["status"] = JobStatus(values["status"])
    values["cost_tokens"] = float(values["cost_tokens"])
    values["reserved_tokens"] = float(values["reserved_tokens"])
    if values["execution_time_seconds"] is not None:
        values["execution_time_seconds"] = float(values["execution_time_seconds"])
    return Job(**values)


async def _fold_jobs(
    conn: asyncpg.Connection, records: list[RecordedEvent]
) -> tuple[dict[uuid.UUID, Job], dict[uuid.UUID, list[RecordedEvent]]]:
    """Fold each job's new events onto its row; returns the jobs and the events applied to each."""
    by_job: dict[uuid.UUID, list[RecordedEvent]] = defaultdict(list)
    for rec in records:
        by_job[rec.stream_id].append(rec)
    needs_row = [job_id for job_id, recs in by_job.items() if recs[0].version > 1]
    current: dict[uuid.UUID, Job] = {}
    if needs_row:
        rows = await conn.fetch(f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs WHERE id = ANY($1::uuid[])", needs_row)
        current = {row["id"]: job_from_row(row) for row in rows}
    folded: dict[uuid.UUID, Job] = {}
    applied: dict[uuid.UUID, list[RecordedEvent]] = {}
    for job_id, recs in by_job.items():
        job = current.get(job_id)
        have = job.version if job else 0
        recs = [r for r in recs if r.version > have]  # already applied: a redelivery
        if recs and recs[0].version != have + 1:  # a hole: take the missing events from the store
            missing = await store.load_stream(conn, job_id, after_version=have)
            recs = [r for r in missing if r.version < recs[0].version] + recs
        if not recs:
            continue
        for rec in recs:
            job = evolve(job, rec)
        assert job is not None
        folded[job_id] = job
        applied[job_id] = recs
    return folded, applied


async def apply(conn: asyncpg.Connection, records: list[RecordedEvent]) -> None:
    """Apply events to every read model. The caller holds the transaction and the projector lock."""
    job_records = [r for r in records if r.stream_type == StreamType.JOB]
    if job_records:
        await _apply_jobs(conn, job_records)
    for rec in records:
        if rec.stream_type != StreamType.JOB:
            await (webhook_folds.apply if rec.stream_type == StreamType.WEBHOOK else _apply_other)(conn, rec)


async def _apply_jobs(conn: asyncpg.Connection, records: list[RecordedEvent]) -> None:
    folded, applied = await _fold_jobs(conn, records)
    if not folded:
        return
    await conn.execute(_UPSERT_JOBS, *_job_arrays(list(folded.values())))

    queue_rows: list[tuple[object, ...]] = []
    dequeued: list[uuid.UUID] = []
    artifacts: list[tuple[object, ...]] = []
    usage: dict[tuple[uuid.UUID, object], list[float]] = defaultdict(lambda: [0.0, 0, 0, 0.0, 0.0, 0.0, 0.0])
    model_stats: dict[str, list[Any]] = defaultdict(lambda: [0, Decimal(0)])
    for job_id, job in folded.items():
        recs = applied[job_id]
        if job.status is JobStatus.QUEUED:
            last = next(r for r in reversed(recs) if isinstance(r.data, JobQueued | JobRequeued))
            queue_rows.append(
                (job_id, job.priority, job.capability, job.model, job.user_id, last.seq, last.recorded_at)
            )
        else:
            dequeued.append(job_id)
        for rec in recs:
            # The quota day the job's tokens count against; jobs from before quotas: the day it ended.
            day = job.quota_day or rec.recorded_at.astimezone(UTC).date()
            if isinstance(rec.data, JobCompleted):
                stats = model_stats[job.model]
                stats[0] += 1
                stats[1] += Decimal(str(round(rec.data.execution_time_seconds, 6)))
                row = usage[(job.user_id, day)]
                row[0] += rec.data.cost_tokens
                row[1] += 1
                row[3 + ("image", "video", "text", "audio").index(USAGE_GROUP[job.capability])] += rec.data.cost_tokens
                artifacts.extend(
                    (
                        a.id,
                        job_id,
                        job.user_id,
                        a.kind,
                        a.format,
                        a.content_type,
                        a.object_name,
                        a.text,
                        a.width,
                        a.height,
                        a.duration_seconds,
                        a.size_bytes,
                        a.expires_at,
                        rec.recorded_at,
                    )
                    for a in rec.data.artifacts
                )
            elif isinstance(rec.data, JobFailed):
                usage[(job.user_id, day)][2] += 1
    if queue_rows:
        await conn.executemany(
            "INSERT INTO job_queue (job_id, priority, capability, model, user_id, enqueued_seq, enqueued_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (job_id) DO UPDATE SET"
            " priority = EXCLUDED.priority, enqueued_seq = EXCLUDED.enqueued_seq, enqueued_at = EXCLUDED.enqueued_at",
            queue_rows,
        )
    if dequeued:
        await conn.execute("DELETE FROM job_queue WHERE job_id = ANY($1::uuid[])", dequeued)
    if artifacts:
        await conn.execute(_INSERT_ARTIFACTS, *(list(column) for column in zip(*artifacts, strict=True)))
    if usage:
        await conn.executemany(
            "INSERT INTO usage_daily AS u (user_id, date, tokens_used, jobs_completed, jobs_failed, tokens_image,"
            " tokens_video, tokens_text, tokens_audio) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " ON CONFLICT (user_id, date) DO UPDATE SET tokens_used = u.tokens_used + EXCLUDED.tokens_used,"
            " jobs_completed = u.jobs_completed + EXCLUDED.jobs_completed,"
            " jobs_failed = u.jobs_failed + EXCLUDED.jobs_failed,"
            " tokens_image = u.tokens_image + EXCLUDED.tokens_image,"
            " tokens_video = u.tokens_video + EXCLUDED.tokens_video,"
            " tokens_text = u.tokens_text + EXCLUDED.tokens_text,"
            " tokens_audio = u.tokens_audio + EXCLUDED.tokens_audio",
            [(user_id, day, *values) for (user_id, day), values in usage.items()],
        )
    await _apply_model_stats(conn, model_stats)


async def _apply_model_stats(conn: asyncpg.Connection, model_stats: dict[str, list[Any]]) -> None:
    if model_stats:
        await conn.executemany(
            "INSERT INTO model_stats AS m (model, jobs_completed, total_execution_seconds) VALUES ($1, $2, $3)"
            " ON CONFLICT (model) DO UPDATE SET jobs_completed = m.jobs_completed + EXCLUDED.jobs_completed,"
            " total_execution_seconds = m.total_execution_seconds + EXCLUDED.total_execution_seconds",
            [(model, int(n), seconds) for model, (n, seconds) in model_stats.items()],
        )


async def _apply_other(conn: asyncpg.Connection, rec: RecordedEvent) -> None:
    event = rec.data
    if isinstance(event, PlanDefined):
        await conn.execute(
            "INSERT INTO plans (tier, name, daily_token_limit, requests_per_minute, max_concurrent_jobs,"
            " max_queued_jobs, priority, max_resolution, allowed_models, price_cents, description, created_at,"
            " uploads_per_day, upload_bytes_per_day, max_upload_bytes)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
            " ON CONFLICT (tier) DO UPDATE SET"
            " name = EXCLUDED.name, daily_token_limit = EXCLUDED.daily_token_limit,"
            " requests_per_minute = EXCLUDED.requests_per_minute, max_concurrent_jobs = EXCLUDED.max_concurrent_jobs,"
            " max_queued_jobs = EXCLUDED.max_queued_jobs, priority = EXCLUDED.priority,"
            " max_resolution = EXCLUDED.max_resolution, allowed_models = EXCLUDED.allowed_models,"
            " price_cents = EXCLUDED.price_cents, description = EXCLUDED.description,"
            " uploads_per_day = EXCLUDED.uploads_per_day, upload_bytes_per_day = EXCLUDED.upload_bytes_per_day,"
            " max_upload_bytes = EXCLUDED.max_upload_bytes",
            event.tier,
            event.name,
            event.daily_token_limit,
            event.requests_per_minute,
            event.max_concurrent_jobs,
            event.max_queued_jobs,
            event.priority,
            event.max_resolution,
            event.allowed_models,
            event.price_cents,
            event.description,
            rec.recorded_at,
            event.uploads_per_day,
            event.upload_bytes_per_day,
            event.max_upload_bytes,
        )
    elif isinstance(event, UploadStored):
        await conn.execute(
            "INSERT INTO uploads (id, user_id, object_name, content_type, size_bytes, duration_seconds, created_at,"
            " expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
            rec.stream_id,
            event.user_id,
            event.object_name,
            event.content_type,
            event.size_bytes,
            event.duration_seconds,
            rec.recorded_at,
            event.expires_at,
        )
    elif isinstance(event, UploadDeleted):
        await conn.execute("UPDATE uploads SET deleted_at = $2 WHERE id = $1", rec.stream_id, rec.recorded_at)
    elif isinstance(event, UploadExpired):
        await conn.execute("UPDATE uploads SET expired_at = $2 WHERE id = $1", rec.stream_id, event.expired_at)
    elif isinstance(event, UserRegistered):
        await conn.execute(
            "INSERT INTO users (id, platform, platform_user_id, plan_tier, display_name, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
            rec.stream_id,
            event.platform,
            event.platform_user_id,
            event.plan,
            event.display_name,
            rec.recorded_at,
        )
    elif isinstance(event, ArtifactExpired):
        await conn.execute("UPDATE artifacts SET expired_at = $2 WHERE id = $1", rec.stream_id, event.expired_at)
    elif isinstance(event, UserPlanChanged):
        await conn.execute("UPDATE users SET plan_tier = $2 WHERE id = $1", rec.stream_id, event.plan)
    elif isinstance(event, ApiKeyIssued):
        await conn.execute(
            "INSERT INTO api_keys (key_hash, key_id, user_id, prefix, label, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key_hash) DO NOTHING",
            event.key_hash,
            event.key_id,
            rec.stream_id,
            event.prefix,
            event.label,
            rec.recorded_at,
        )
    elif isinstance(event, ApiKeyRevoked):
        await conn.execute(
            "UPDATE api_keys SET revoked_at = $2 WHERE key_id = $1 AND revoked_at IS NULL",
            event.key_id,
            rec.recorded_at,
        )
    elif isinstance(event, FrontendKeyRevoked):
        await conn.execute(
            "UPDATE frontend_keys SET revoked_at = $2 WHERE key_id = $1 AND revoked_at IS NULL",
            event.key_id,
            rec.recorded_at,
        )
    elif isinstance(event, FrontendKeyIssued):
        await conn.execute(
            "INSERT INTO frontend_keys (key_hash, key_id, frontend, bot_id, prefix, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key_hash) DO NOTHING",
            event.key_hash,
            event.key_id,
            event.frontend,
            event.bot_id,
            event.prefix,
            rec.recorded_at,
        )


# The transaction-scoped advisory lock that lets one projector write the read models at a time.
PROJECTOR_LOCK = 0x7E55E7A9120


async def lock(conn: asyncpg.Connection) -> None:
    """Wait for the projection lock; held until the current transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", PROJECTOR_LOCK)


async def position(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT seq FROM projection_position WHERE name = 'read_models'"))


async def set_position(conn: asyncpg.Connection, seq: int) -> None:
    await conn.execute("UPDATE projection_position SET seq = $1 WHERE name = 'read_models'", seq)
