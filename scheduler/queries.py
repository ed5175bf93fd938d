"""All SQL of the scheduler's own tables, and its leader lock.

Owns `active_jobs` (the jobs not yet terminal, so a new leader folds only those),
`relay_position` (how far committed events were published to NATS) and `quota_charges` (tokens
charged per quota day and user). All change only with the events that move them: `commit_batch`
writes them inside the event store's append statement, so one round trip commits all of it or none.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import date

import asyncpg

from events import store
from events.job import Job
from events.store import FIRST_ALONGSIDE_PARAM, PendingEvent
from events.types import JobCompleted, RecordedEvent

# The session advisory lock whose holder is the one scheduler that writes.
LEADER_LOCK = 0x7E55E7A5C4ED

_STARTED, _ENDED, _RELAYED = FIRST_ALONGSIDE_PARAM, FIRST_ALONGSIDE_PARAM + 1, FIRST_ALONGSIDE_PARAM + 2
_DAYS, _USERS, _TOKENS = FIRST_ALONGSIDE_PARAM + 3, FIRST_ALONGSIDE_PARAM + 4, FIRST_ALONGSIDE_PARAM + 5

# A job both activated and finished in one batch is never added (the caller leaves it out).
_ALONGSIDE_COMMIT = f"""
    started AS (INSERT INTO active_jobs (job_id) SELECT unnest(${_STARTED}::uuid[]) ON CONFLICT DO NOTHING),
    ended AS (DELETE FROM active_jobs WHERE job_id = ANY(${_ENDED}::uuid[])),
    relayed AS (UPDATE relay_position SET seq = greatest(seq, ${_RELAYED}) WHERE name = 'events' AND ${_RELAYED} > 0),
    charged AS (INSERT INTO quota_charges AS q (day, user_id, tokens)
        SELECT d, u, sum(t) FROM unnest(${_DAYS}::date[], ${_USERS}::uuid[], ${_TOKENS}::float8[]) AS c(d, u, t)
        GROUP BY d, u
        ON CONFLICT (day, user_id) DO UPDATE SET tokens = q.tokens + EXCLUDED.tokens)
"""


async def try_lead(conn: asyncpg.Connection) -> bool:
    """Take the leader lock on this session if nobody holds it; held until the session ends."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK))


async def commit_batch(
    conn: asyncpg.Connection,
    pending: Sequence[PendingEvent],
    *,
    activated: Sequence[uuid.UUID],
    finished: Sequence[uuid.UUID],
    relayed_seq: int,
    owners: Mapping[uuid.UUID, Job] | None = None,
) -> list[RecordedEvent]:
    """The scheduler's whole commit in one statement, so one round trip and one implicit transaction.

    Appends the events, keeps the active_jobs index (a job both activated and finished in this batch
    is never added), moves the relay position forward and adds the completions' charges to the
    token ledger (each job's user from `owners`, the jobs the batch decided on). All or nothing,
    like `store.append`.
    """
    done = set(finished)
    started = [job_id for job_id in dict.fromkeys(activated) if job_id not in done]
    charges: tuple[list[date], list[uuid.UUID], list[float]] = ([], [], [])
    for p in pending:
        if isinstance(p.data, JobCompleted) and p.data.quota_day is not None:
            charges[0].append(p.data.quota_day)
            charges[1].append((owners or {})[p.stream_id].user_id)
            charges[2].append(p.data.cost_tokens)
    return await store.append(
        conn, pending, alongside=_ALONGSIDE_COMMIT, alongside_args=(started, list(done), relayed_seq, *charges)
    )


async def tokens_charged(conn: asyncpg.Connection, since: date) -> dict[tuple[uuid.UUID, date], float]:
    """Tokens charged per (user, quota day) from `since` on, from the ledger: one index range."""
    rows = await conn.fetch("SELECT user_id, day, tokens FROM quota_charges WHERE day >= $1", since)
    return {(r["user_id"], r["day"]): r["tokens"] for r in rows}


async def load_active_jobs(conn: asyncpg.Connection) -> list[RecordedEvent]:
    """Every event of the jobs that are not terminal yet, in log order."""
    job_ids = await conn.fetch("SELECT job_id FROM active_jobs")
    return await store.load_streams(conn, [row["job_id"] for row in job_ids])


async def relay_position(conn: asyncpg.Connection) -> int:
    """The newest event sequence number known to be published to NATS."""
    return int(await conn.fetchval("SELECT seq FROM relay_position WHERE name = 'events'"))
