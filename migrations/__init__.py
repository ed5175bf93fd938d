"""Numbered SQL migrations, applied in order, each once, under an advisory lock."""

from __future__ import annotations

import logging
from importlib import resources

import asyncpg

log = logging.getLogger(__name__)

_LOCK_KEY = 0x7E55E7A0001


def available() -> list[tuple[int, str, str]]:
    """(number, name, sql) of every migration file shipped with the package, in order."""
    found = []
    for entry in resources.files(__package__).iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text()))
    return sorted(found)


async def apply(conn: asyncpg.Connection) -> list[str]:
    """Apply the migrations this database lacks; returns the names applied."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for number, name, sql in available():
            if number in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", number, name)
            log.info("applied migration %s", name)
            applied_now.append(name)
        if applied_now:
            # Give the planner statistics from the start. Until a table is first analyzed it
            # guesses that "seq > N" matches a third of the event log, and plans reading the log
            # in order as a sort of the whole table; with the seed plans' events analyzed, it
            # finds the log's real end in the index and keeps the index scan as the log grows.
            await conn.execute("ANALYZE")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now
