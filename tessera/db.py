"""Connection set-up shared by every service that talks to PostgreSQL."""

from __future__ import annotations

import asyncpg
import msgspec

_encoder = msgspec.json.Encoder()


async def init_connection(conn: asyncpg.Connection) -> None:
    """jsonb in and out as Python values (msgspec does the JSON)."""
    await conn.set_type_codec("jsonb", schema="pg_catalog", format="text",
                              encoder=lambda v: _encoder.encode(v).decode(), decoder=msgspec.json.decode)


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=init_connection)
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await init_connection(conn)
    return conn
