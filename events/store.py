"""All SQL of the event store: batched, optimistic-concurrency-checked appends and stream reads.

Owns the `events` table (with its `seq` sequence, its append-only triggers and its NOTIFY). Other
packages' tables are not touched here: a package whose rows must commit with an append (the
scheduler's `active_jobs` and `relay_position`) hands its statements to `append` as `alongside`,
and they run inside the append's one statement.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime

import asyncpg
import msgspec

from events.errors import ConcurrencyError
from events.types import (
    AnyEvent,
    JobCompleted,
    JobSubmitted,
    RecordedEvent,
    StreamType,
    UploadStored,
    decode_data,
    encode,
    event_type,
    type_name,
)

# Literal in the SQL, not parameters: the partial indexes on these types then serve every plan.
_COMPLETED, _SUBMITTED, _UPLOADED = type_name(JobCompleted), type_name(JobSubmitted), type_name(UploadStored)

_COLUMNS = "seq, event_id, stream_type, stream_id, version, data::text AS data, recorded_at, causation_id"


class PendingEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event about to be appended at `version` of its stream (expected version + 1)."""

    stream_type: str
    stream_id: uuid.UUID
    version: int
    data: AnyEvent
    causation_id: str | None = None
    event_id: uuid.UUID = msgspec.field(default_factory=uuid.uuid4)
    recorded_at: datetime = msgspec.field(default_factory=lambda: datetime.now(UTC))

    def recorded(self, seq: int) -> RecordedEvent:
        return RecordedEvent(
            seq=seq,
            event_id=self.event_id,
            stream_type=self.stream_type,
            stream_id=self.stream_id,
            version=self.version,
            recorded_at=self.recorded_at,
            causation_id=self.causation_id,
            data=self.data,
        )


def _row_to_event(row: asyncpg.Record) -> RecordedEvent:
    return RecordedEvent(
        seq=row["seq"],
        event_id=row["event_id"],
        stream_type=row["stream_type"],
        stream_id=row["stream_id"],
        version=row["version"],
        recorded_at=row["recorded_at"],
        causation_id=row["causation_id"],
        data=decode_data(row["data"]),
    )


_INSERT_EVENTS = """
    INSERT INTO events (event_id, stream_type, stream_id, version, type, data, recorded_at, causation_id)
    SELECT e, st, sid, v, t, d::jsonb, r, c
    FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::int[], $5::text[], $6::text[],
                $7::timestamptz[], $8::text[]) WITH ORDINALITY AS u(e, st, sid, v, t, d, r, c, n)
    ORDER BY n
    RETURNING seq, event_id
"""


def _event_columns(pending: Sequence[PendingEvent]) -> list[list[object]]:
    return [
        [p.event_id for p in pending],
        [p.stream_type for p in pending],
        [p.stream_id for p in pending],
        [p.version for p in pending],
        [event_type(p.data) for p in pending],
        [encode(p.data).decode() for p in pending],
        [p.recorded_at for p in pending],
        [p.causation_id for p in pending],
    ]


def _recorded(pending: Sequence[PendingEvent], rows: Sequence[asyncpg.Record]) -> list[RecordedEvent]:
    seqs = {row["event_id"]: row["seq"] for row in rows}
    return [p.recorded(seqs[p.event_id]) for p in pending]


def _concurrency_error(exc: asyncpg.UniqueViolationError, pending: Sequence[PendingEvent]) -> Exception:
    if exc.constraint_name == "events_stream_version_key":
        first = pending[0]
        return ConcurrencyError(first.stream_id, first.version - 1)
    other: Exception = exc  # asyncpg has no type information
    return other


# The append's own parameters are $1..$8; statements run alongside it number theirs from $9.
FIRST_ALONGSIDE_PARAM = 9


async def append(
    conn: asyncpg.Connection,
    pending: Sequence[PendingEvent],
    *,
    alongside: str = "",
    alongside_args: Sequence[object] = (),
) -> list[RecordedEvent]:
    """Append events in one statement; the caller owns any wider transaction.

    A (stream_id, version) that exists already means another writer got there first: that is a
    ConcurrencyError, and nothing of the statement is written.

    `alongside` holds data-modifying common table expressions of another package's tables
    (`name AS (INSERT ...), ...`, parameters from `$FIRST_ALONGSIDE_PARAM` on, bound to
    `alongside_args`) that must commit or fail with these events. They run in the same statement,
    so in one round trip and one implicit transaction, even when no event is pending.
    """
    if not pending and not alongside:
        return []
    statement = _INSERT_EVENTS
    args: list[object] = [*_event_columns(pending), *alongside_args]
    if alongside:
        statement = f"WITH appended AS ({_INSERT_EVENTS}), {alongside} SELECT seq, event_id FROM appended"
    try:
        rows = await conn.fetch(statement, *args)
    except asyncpg.UniqueViolationError as exc:
        raise _concurrency_error(exc, pending) from exc
    return _recorded(pending, rows)


async def load_stream(conn: asyncpg.Connection, stream_id: uuid.UUID, after_version: int = 0) -> list[RecordedEvent]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM events WHERE stream_id = $1 AND version > $2 ORDER BY version",
        stream_id,
        after_version,
    )
    return [_row_to_event(r) for r in rows]


async def load_streams(conn: asyncpg.Connection, stream_ids: Iterable[uuid.UUID]) -> list[RecordedEvent]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM events WHERE stream_id = ANY($1::uuid[]) ORDER BY seq", list(stream_ids)
    )
    return [_row_to_event(r) for r in rows]


async def load_after(conn: asyncpg.Connection, seq: int, limit: int = 1000) -> list[RecordedEvent]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2", seq, limit)
    return [_row_to_event(r) for r in rows]


async def load_stream_type(conn: asyncpg.Connection, stream_type: str) -> list[RecordedEvent]:
    """Every event of one kind of stream, in log order. The kind is spelled in the SQL (a StreamType
    value, so nothing to quote): the partial index of the plan, frontend and webhook streams then
    serves every plan, where a parameter could leave a generic plan scanning the whole log."""
    kind = StreamType(stream_type).value
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM events WHERE stream_type = '{kind}' ORDER BY seq")
    return [_row_to_event(r) for r in rows]


async def tokens_charged(conn: asyncpg.Connection, since: date) -> dict[tuple[uuid.UUID, date], float]:
    """Tokens charged per (user, quota day) from `since` on: what completed jobs cost, summed over
    the log. A join over every completion since then: the scheduler reads its own ledger
    (`scheduler.queries.tokens_charged`) and this is what that ledger is checked against."""
    rows = await conn.fetch(
        f"""
        SELECT (s.data->>'user_id')::uuid AS user_id, (c.data->>'quota_day')::date AS day,
               sum((c.data->>'cost_tokens')::float8) AS tokens
        FROM events c JOIN events s ON s.stream_id = c.stream_id AND s.version = 1
        WHERE c.type = '{_COMPLETED}' AND c.data->>'quota_day' >= $1
        GROUP BY 1, 2
        """,
        since.isoformat(),
    )
    return {(r["user_id"], r["day"]): r["tokens"] for r in rows}


async def recent_submits(conn: asyncpg.Connection, seconds: float = 60.0) -> list[tuple[uuid.UUID, float]]:
    """(user, when as a UNIX time) of every job submitted in the last `seconds`, oldest first: the
    requests that a plan's per-minute rate limit still counts. The statement's time, not
    clock_timestamp(): a stable bound is what lets the partial index on submit times find them."""
    rows = await conn.fetch(
        f"""
        SELECT (data->>'user_id')::uuid AS user_id, extract(epoch FROM recorded_at)::float8 AS at
        FROM events WHERE type = '{_SUBMITTED}' AND recorded_at > statement_timestamp() - make_interval(secs => $1)
        ORDER BY recorded_at
        """,
        seconds,
    )
    return [(r["user_id"], r["at"]) for r in rows]


async def execution_times(conn: asyncpg.Connection, recent: int = 2000) -> dict[str, float]:
    """Mean measured execution time per model over the most recent completions."""
    rows = await conn.fetch(
        f"""
        SELECT s.data->>'model' AS model, avg((c.data->>'execution_time_seconds')::float8) AS seconds
        FROM (SELECT stream_id, data FROM events WHERE type = '{_COMPLETED}' ORDER BY seq DESC LIMIT $1) c
        JOIN events s ON s.stream_id = c.stream_id AND s.version = 1
        GROUP BY 1
        """,
        recent,
    )
    return {r["model"]: r["seconds"] for r in rows}


async def uploads_counted(conn: asyncpg.Connection, since: date) -> dict[tuple[uuid.UUID, date], tuple[int, int]]:
    """Uploads and their bytes per (user, quota day) from `since` on, deleted ones included."""
    rows = await conn.fetch(
        "SELECT (data->>'user_id')::uuid AS user_id, (data->>'quota_day')::date AS day, count(*) AS n,"
        " sum((data->>'size_bytes')::bigint) AS bytes FROM events"
        f" WHERE type = '{_UPLOADED}' AND data->>'quota_day' >= $1 GROUP BY 1, 2",
        since.isoformat(),
    )
    return {(r["user_id"], r["day"]): (int(r["n"]), int(r["bytes"])) for r in rows}


async def head(conn: asyncpg.Connection) -> int:
    """The newest sequence number in the log (0 when empty)."""
    return int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM events"))


async def quota_day_settlements(
    conn: asyncpg.Connection, day: date, up_to_seq: int, types: Sequence[str]
) -> list[tuple[RecordedEvent, RecordedEvent]]:
    """The job events of `types` (completions, failures, cancellations) that settle a reservation of
    quota day `day`, up to log position `up_to_seq`, each with its job's first event (JobSubmitted):
    what a day's bill is made of (`tessera billing`)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM events WHERE type = ANY($1::text[]) AND data->>'quota_day' = $2 AND seq <= $3"
        " ORDER BY seq",
        list(types),
        day.isoformat(),
        up_to_seq,
    )
    settled = [_row_to_event(r) for r in rows]
    firsts = await conn.fetch(
        f"SELECT {_COLUMNS} FROM events WHERE stream_id = ANY($1::uuid[]) AND version = 1",
        list({rec.stream_id for rec in settled}),
    )
    submitted = {rec.stream_id: rec for rec in map(_row_to_event, firsts)}
    return [(rec, submitted[rec.stream_id]) for rec in settled if rec.stream_id in submitted]


async def jobs_submitted_by(conn: asyncpg.Connection, user_id: uuid.UUID, after: int, upto: int) -> list[uuid.UUID]:
    """The jobs `user_id` submitted between log positions `after` (excluded) and `upto`, in order."""
    rows = await conn.fetch(
        "SELECT stream_id FROM events WHERE seq > $1 AND seq <= $2 AND type = $3 AND data->>'user_id' = $4"
        " ORDER BY seq",
        after,
        upto,
        type_name(JobSubmitted),
        str(user_id),
    )
    return [r["stream_id"] for r in rows]


async def jobs_of_user(conn: asyncpg.Connection, user_id: uuid.UUID, job_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Those of `job_ids` that `user_id` submitted (from the log: a job not yet projected counts)."""
    if not job_ids:
        return set()
    rows = await conn.fetch(
        "SELECT stream_id FROM events WHERE stream_id = ANY($1::uuid[]) AND version = 1 AND type = $2"
        " AND data->>'user_id' = $3",
        job_ids,
        type_name(JobSubmitted),
        str(user_id),
    )
    return {r["stream_id"] for r in rows}
