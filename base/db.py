"""Connection set-up shared by every service that talks to PostgreSQL.

Services hold a pool through `pool` and a single connection through `connection`, both async
context managers that close what they opened on exit, and give up on a close that hangs (a
server gone away) after a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg
import msgspec

log = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()

# Plan every statement for its own parameters. asyncpg prepares each statement once per
# connection, and PostgreSQL then settles on a generic plan after five executions. On a fresh
# database that plan is made while the event log is nearly empty and not yet analyzed, so
# "events after seq N, in order" was planned as a sort of the whole table and kept that way as
# the log grew: 5 ms a call at 60,000 events instead of 0.05 ms. A custom plan costs a few
# microseconds of planning and always sees the table's current size.
SERVER_SETTINGS = {"plan_cache_mode": "force_custom_plan"}


async def init_connection(conn: asyncpg.Connection) -> None:
    """jsonb in and out as Python values (msgspec does the JSON)."""
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        format="text",
        encoder=lambda v: _encoder.encode(v).decode(),
        decoder=msgspec.json.decode,
    )


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=init_connection, server_settings=SERVER_SETTINGS
    )
    assert pool is not None
    return pool


async def connect(dsn: str, *, json_codec: bool = True, application_name: str | None = None) -> asyncpg.Connection:
    """One connection. Without `json_codec`, jsonb travels as text (the scheduler's session, whose
    queries cast it themselves)."""
    settings = {**SERVER_SETTINGS, "application_name": application_name} if application_name else SERVER_SETTINGS
    conn = await asyncpg.connect(dsn, server_settings=settings)
    if json_codec:
        await init_connection(conn)
    return conn


@contextlib.asynccontextmanager
async def pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, close_timeout_s: float = 10.0
) -> AsyncIterator[asyncpg.Pool]:
    """A pool for the block: closed on exit once its connections are released, terminated when
    that takes longer than `close_timeout_s`."""
    opened = await create_pool(dsn, min_size=min_size, max_size=max_size)
    try:
        yield opened
    finally:
        try:
            await asyncio.wait_for(opened.close(), close_timeout_s)
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            log.warning("closing the database pool failed (%r); terminating its connections", exc)
            opened.terminate()


@contextlib.asynccontextmanager
async def connection(
    dsn: str, *, json_codec: bool = True, application_name: str | None = None, close_timeout_s: float = 5.0
) -> AsyncIterator[asyncpg.Connection]:
    """One connection for the block (`connect`), closed on exit, or terminated when closing it fails
    or hangs (its server gone)."""
    conn = await connect(dsn, json_codec=json_codec, application_name=application_name)
    try:
        yield conn
    finally:
        try:
            await asyncio.wait_for(conn.close(), close_timeout_s)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            conn.terminate()


async def reachable(db: asyncpg.Pool, timeout_s: float = 2.0) -> bool:
    """Whether the pool hands out a connection that answers within `timeout_s` (readiness)."""
    try:
        async with asyncio.timeout(timeout_s), db.acquire() as conn:
            return bool(await conn.fetchval("SELECT true"))
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
