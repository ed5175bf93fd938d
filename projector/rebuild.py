"""Rebuilding the read models without an outage: fold the log into new tables, then swap them in.

`rebuild` creates the schema `projection_rebuild` with an empty copy of every read model table
(`CREATE TABLE ... (LIKE public.x INCLUDING ALL)`) and folds the event log into it in chunks, one
transaction each, with the folds the projector uses (`folds.apply`, under a search_path that
names the new schema first). The position reached is stored in that schema with each chunk, so a
rebuild that stopped (killed, or the database restarted) resumes where it was. Once it has
caught up with the log, one short transaction takes the projection lock (the live projector
waits), folds the last few events, moves the live tables out and the new ones in
(`ALTER TABLE ... SET SCHEMA`), gives the new indexes the old names, re-creates the views on the
tables and sets the projector's position to the rebuild's: the projector then carries on from
there, so no event is folded twice or missed. Reads go on against the live tables until that
swap, and wait only for it.

`check` folds the same way, never past the live projector's position, and compares the new
tables with the live ones in one snapshot (REPEATABLE READ) without swapping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg

from events import store
from projector import folds

log = logging.getLogger(__name__)

SCHEMA = "projection_rebuild"  # the tables being built, and the position reached
RETIRED = "projection_retired"  # the old tables, between the swap and their drop

# Called after each committed chunk with the position reached (a test pauses or stops a rebuild here).
OnChunk = Callable[[int], Awaitable[None]]

# A table's columns and their types, to tell whether an unfinished rebuild still matches the schema.
_SHAPE = (
    "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)"
    " FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped"
)
# Each index of a table, with its definition less its name and table (the key that pairs an old
# index with its copy).
_INDEXES = (
    "SELECT c.relname AS name, regexp_replace(pg_get_indexdef(i.indexrelid), '^.* ON \\S+ ', '') AS key"
    " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1::regclass ORDER BY c.relname"
)
# The views that read a table (queue_depth reads job_queue): re-created on the new tables at the swap.
_VIEWS = (
    "SELECT DISTINCT v.oid::regclass::text AS name, pg_get_viewdef(v.oid) AS definition"
    " FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class"
    " WHERE d.refobjid = ANY($1::regclass[]) AND v.relkind = 'v' AND v.oid <> d.refobjid"
)


class RebuildMismatch(Exception):
    """An unfinished rebuild's tables no longer have the live tables' columns (a migration ran since)."""


@dataclass
class Comparison:
    """What `check` found: the position compared at, and per table the rows only one side has."""

    position: int
    only_live: dict[str, int] = field(default_factory=dict)
    only_rebuilt: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)

    @property
    def differs(self) -> bool:
        return any(self.only_live.values()) or any(self.only_rebuilt.values())


async def _position(conn: asyncpg.Connection) -> int | None:
    """How far the rebuild in progress has folded, or None when there is none."""
    if await conn.fetchval("SELECT to_regclass($1)", f"{SCHEMA}.rebuild_position") is None:
        return None
    return int(await conn.fetchval(f"SELECT seq FROM {SCHEMA}.rebuild_position"))


async def prepare(conn: asyncpg.Connection, *, restart: bool = False) -> int:
    """Start a rebuild (empty copies of the read model tables) or find the one in progress;
    returns the position it has reached. `restart` throws an unfinished one away first."""
    if restart:
        await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    position = await _position(conn)
    if position is not None:
        for table in folds.READ_MODEL_TABLES:
            if await conn.fetchval(_SHAPE, f"public.{table}") != await conn.fetchval(_SHAPE, f"{SCHEMA}.{table}"):
                raise RebuildMismatch(f"{SCHEMA}.{table} no longer matches public.{table}; rebuild with --restart")
        log.info("resuming the rebuild at seq %d", position)
        return position
    async with conn.transaction():
        await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        await conn.execute(f"CREATE SCHEMA {SCHEMA}")
        for table in folds.READ_MODEL_TABLES:
            await conn.execute(f"CREATE TABLE {SCHEMA}.{table} (LIKE public.{table} INCLUDING ALL)")
        await conn.execute(f"CREATE TABLE {SCHEMA}.rebuild_position (seq bigint NOT NULL)")
        await conn.execute(f"INSERT INTO {SCHEMA}.rebuild_position (seq) VALUES (0)")
    return 0


async def _fold(conn: asyncpg.Connection, position: int, chunk: int, upto: int | None) -> tuple[int, int]:
    """Fold the events after `position` (at most `chunk`, none past `upto`) into the new tables,
    in the caller's transaction; returns the new position and how many events were read."""
    records = await store.load_after(conn, position, chunk)
    read = len(records)
    if upto is not None:
        records = [r for r in records if r.seq <= upto]
    if records:
        await conn.execute(f"SET LOCAL search_path = {SCHEMA}, public")
        await folds.apply(conn, records)
        await conn.execute("SET LOCAL search_path TO DEFAULT")
        position = records[-1].seq
        await conn.execute(f"UPDATE {SCHEMA}.rebuild_position SET seq = $1", position)
    return position, read


async def _fold_chunks(
    conn: asyncpg.Connection, position: int, chunk: int, on_chunk: OnChunk | None, *, to_live: bool = False
) -> int:
    """Fold chunk after chunk, each committed with its position, until the log's end (or, with
    `to_live`, the live projector's position: a check never goes past what it compares with)."""
    while True:
        upto = await folds.position(conn) if to_live else None
        async with conn.transaction():
            position, read = await _fold(conn, position, chunk, upto)
        if on_chunk is not None:
            await on_chunk(position)
        if read < chunk or (upto is not None and position >= upto):
            return position


async def rebuild(
    conn: asyncpg.Connection,
    *,
    chunk: int = 5000,
    restart: bool = False,
    on_chunk: OnChunk | None = None,
    lock_timeout_s: float = 1.0,
) -> int:
    """Rebuild every read model from the log into new tables and swap them in; returns the
    position the read models are at after the swap. Resumes an unfinished rebuild."""
    position = await prepare(conn, restart=restart)
    position = await _fold_chunks(conn, position, chunk, on_chunk)
    for table in folds.READ_MODEL_TABLES:  # the planner's statistics, before the tables serve reads
        await conn.execute(f"ANALYZE {SCHEMA}.{table}")
    position = await _fold_chunks(conn, position, chunk, on_chunk)  # what came during ANALYZE
    for attempt in range(1, 31):
        try:
            position = await _swap(conn, chunk, lock_timeout_s)
            break
        except asyncpg.LockNotAvailableError:
            # A long read held a table: the swap gave up rather than queue every read behind it.
            log.warning(
                "rebuild: the swap waited over %.1f s for a lock (attempt %d); retrying", lock_timeout_s, attempt
            )
            await asyncio.sleep(min(5.0, 0.2 * attempt))
    else:
        raise TimeoutError("rebuild: could not take the read model tables for the swap; the rebuild is kept")
    await conn.execute(f"DROP SCHEMA IF EXISTS {RETIRED} CASCADE")
    return position


async def _swap(conn: asyncpg.Connection, chunk: int, lock_timeout_s: float) -> int:
    """Catch up and swap the new tables in, in one transaction under the projection lock."""
    tables = folds.READ_MODEL_TABLES
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_s * 1000)}")
        await folds.lock(conn)  # the live projector folds nothing until this commits
        position = await _position(conn)
        assert position is not None
        while True:
            position, read = await _fold(conn, position, chunk, None)
            if read < chunk:
                break
        views = await conn.fetch(_VIEWS, [f"public.{t}" for t in tables])
        indexes = {t: await conn.fetch(_INDEXES, f"public.{t}") for t in tables}
        await conn.execute(f"DROP SCHEMA IF EXISTS {RETIRED} CASCADE")
        await conn.execute(f"CREATE SCHEMA {RETIRED}")
        for table in tables:
            await conn.execute(f"ALTER TABLE public.{table} SET SCHEMA {RETIRED}")
        for table in tables:
            await conn.execute(f"ALTER TABLE {SCHEMA}.{table} SET SCHEMA public")
        await _rename_indexes(conn, indexes)
        for view in views:
            await conn.execute(f"CREATE OR REPLACE VIEW {view['name']} AS {view['definition']}")
        await folds.set_position(conn, position)
        await conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
    log.info("rebuild: swapped in read models folded up to seq %d", position)
    return position


async def _rename_indexes(conn: asyncpg.Connection, old: dict[str, list[asyncpg.Record]]) -> None:
    """Give each new index (named by LIKE) the name of the old index it copies, so later
    migrations find the indexes by the names they were created with."""
    renames: list[tuple[str, str]] = []
    for table, old_indexes in old.items():
        new_indexes = list(await conn.fetch(_INDEXES, f"public.{table}"))
        for index in old_indexes:
            twin = next((n for n in new_indexes if n["key"] == index["key"]), None)
            if twin is not None:
                new_indexes.remove(twin)
                renames.append((twin["name"], index["name"]))
    for n, (new, _) in enumerate(renames):  # through names of their own: no clash midway
        await conn.execute(f'ALTER INDEX public."{new}" RENAME TO "tessera_swap_{n}"')
    for n, (_, name) in enumerate(renames):
        await conn.execute(f'ALTER INDEX public."tessera_swap_{n}" RENAME TO "{name}"')


async def check(
    conn: asyncpg.Connection,
    *,
    chunk: int = 5000,
    restart: bool = False,
    on_chunk: OnChunk | None = None,
    settle_s: float = 30.0,
) -> Comparison:
    """Fold the log into new tables and compare them with the live read models, row for row, at
    the live projector's position; nothing is swapped, and the new tables are dropped after."""
    position = await prepare(conn, restart=restart)
    position = await _fold_chunks(conn, position, chunk, on_chunk, to_live=True)
    deadline = asyncio.get_running_loop().time() + settle_s
    found: Comparison | None = None
    while found is None:
        async with conn.transaction(isolation="repeatable_read"):  # one snapshot of both sides
            live = await folds.position(conn)
            if live >= position:
                while position < live:
                    position, _ = await _fold(conn, position, chunk, live)
                found = await _compare(conn, live)
                continue
        # An earlier rebuild folded past the live projector: wait for it to get there.
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"check: the projector stayed behind seq {position}; is it running?")
        await asyncio.sleep(0.2)
    await discard(conn)
    return found


async def _compare(conn: asyncpg.Connection, position: int) -> Comparison:
    found = Comparison(position=position)
    for table in folds.READ_MODEL_TABLES:
        for side, (a, b) in (("live", ("public", SCHEMA)), ("rebuilt", (SCHEMA, "public"))):
            rows = await conn.fetch(f"SELECT * FROM {a}.{table} EXCEPT ALL SELECT * FROM {b}.{table}")
            (found.only_live if side == "live" else found.only_rebuilt)[table] = len(rows)
            found.samples += [f"{table}: only {side}: {tuple(r.values())}" for r in rows[:5]]
    return found


async def discard(conn: asyncpg.Connection) -> None:
    """Throw away a rebuild in progress (after a check, or on an operator's word)."""
    await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
