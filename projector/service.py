"""The projector process: folds relayed events into the read models, exactly once.

Its position (the last event sequence applied) is stored in the same transaction as the rows it
wrote, so a redelivered event is recognised and skipped. At start it first reads what it missed
straight from the event store, then follows the events stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from events import store
from events.types import RecordedEvent, decode_recorded
from projector import folds
from streams import subjects as s
from tessera.db import create_pool

log = logging.getLogger(__name__)

PROJECTOR_LOCK = 0x7E55E7A9120


async def apply_batch(conn: asyncpg.Connection, records: list[RecordedEvent]) -> int:
    """Apply the events newer than the stored position; returns the new position."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PROJECTOR_LOCK)
        position = await folds.position(conn)
        fresh = [r for r in records if r.seq > position]
        if fresh:
            await folds.apply(conn, fresh)
            position = fresh[-1].seq
            await folds.set_position(conn, position)
        return position


async def rebuild(conn: asyncpg.Connection, chunk: int = 5000) -> int:
    """Drop every read model and fold it again from the whole event log, in one transaction."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PROJECTOR_LOCK)
        await folds.truncate(conn)
        position = 0
        while True:
            records = await store.load_after(conn, position, chunk)
            if not records:
                break
            await folds.apply(conn, records)
            position = records[-1].seq
        await folds.set_position(conn, position)
        return position


class Projector:
    def __init__(self, *, nats_url: str, database_url: str, batch: int = 1000) -> None:
        self.nats_url = nats_url
        self.database_url = database_url
        self.batch = batch
        self.position = 0
        self._stopping = asyncio.Event()
        self._nc: NATS | None = None

    async def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        self._nc = await nats.connect(self.nats_url, name="projector", max_reconnect_attempts=-1)
        pool = await create_pool(self.database_url, max_size=2)
        try:
            while not self._stopping.is_set():
                try:
                    await self._follow(pool)
                except Exception:
                    log.exception("projector: restarting after an error")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), 1.0)
        finally:
            await pool.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), 5)

    async def _follow(self, pool: asyncpg.Pool) -> None:
        assert self._nc is not None
        async with pool.acquire() as conn:
            self.position = await folds.position(conn)
            while records := await store.load_after(conn, self.position, self.batch):
                self.position = await apply_batch(conn, records)
        js = self._nc.jetstream()
        sub = await js.pull_subscribe(
            s.EVENTS_ALL, durable=s.PROJECTOR_CONSUMER, stream=s.EVENTS_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.ALL, ack_wait=30, max_ack_pending=100_000,
                                  deliver_policy=DeliverPolicy.ALL,
                                  description="Read models: folds every committed event into PostgreSQL"),
        )
        decoder = msgspec.json.Decoder(RecordedEvent)
        while not self._stopping.is_set():
            try:
                msgs = await sub.fetch(self.batch, timeout=0.5)
            except TimeoutError:
                continue
            if not msgs:
                continue
            records = []
            for msg in msgs:
                try:
                    records.append(decoder.decode(msg.data))
                except msgspec.DecodeError as exc:
                    log.error("projector: skipping an undecodable event on %s: %s", msg.subject, exc)
            records.sort(key=lambda r: r.seq)
            async with pool.acquire() as conn:
                self.position = await apply_batch(conn, records)
            await msgs[-1].ack()


__all__ = ["Projector", "apply_batch", "decode_recorded", "rebuild"]
