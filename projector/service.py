"""The projector process: folds relayed events into the read models, exactly once.

Its position (the last event sequence applied) is stored in the same transaction as the rows it
wrote, so nothing is folded twice. It reads the events themselves from the event store, in log
order; the relayed events stream only tells it when there is something new to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from events import store
from events.types import RecordedEvent, decode_recorded
from projector import folds
from streams import subjects as s
from streams import topology
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
        """Fold everything after the stored position, then again each time the relay rings.

        The events stream is only the doorbell: what is folded is always read from PostgreSQL in
        log order, so a relay message that is lost, late or acknowledged by a previous instance
        cannot leave a hole, and AckPolicy.ALL is safe here.
        """
        assert self._nc is not None
        async with pool.acquire() as conn:
            self.position = await folds.position(conn)
            await self._catch_up(conn)
        js = self._nc.jetstream()
        sub = await topology.durable_pull(
            js, subject=s.EVENTS_ALL, durable=s.PROJECTOR_CONSUMER, stream=s.EVENTS_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.ALL, ack_wait=30, max_ack_pending=100_000,
                                  deliver_policy=DeliverPolicy.NEW,
                                  description="Read models: a doorbell; the projector folds from PostgreSQL"),
        )
        while not self._stopping.is_set():
            try:
                msgs = await sub.fetch(self.batch, timeout=0.5)
            except TimeoutError:
                continue
            if not msgs:
                continue
            newest = max(_seq(m) for m in msgs)
            if newest > self.position:
                async with pool.acquire() as conn:
                    await self._catch_up(conn)
            await msgs[-1].ack()

    async def _catch_up(self, conn: asyncpg.Connection) -> None:
        while records := await store.load_after(conn, self.position, self.batch):
            self.position = await apply_batch(conn, records)


def _seq(msg: Msg) -> int:
    """The event's log sequence, from the relay's header (0 when absent: fold anyway)."""
    try:
        return int((msg.headers or {}).get(s.HDR_SEQ, ""))
    except ValueError:
        return 1 << 62


__all__ = ["Projector", "apply_batch", "decode_recorded", "rebuild"]
