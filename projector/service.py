"""The projector process: folds relayed events into the read models, exactly once.

Its position (the last event sequence applied) is stored in the same transaction as the rows it
wrote, so nothing is folded twice. It reads the events from the event store, in log order, when
the scheduler says the log has grown, and once a second in any case.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from base import db
from base.health import NOT_STARTED, Readiness
from events import store
from events.types import RecordedEvent, decode_recorded
from projector import folds, metrics
from streams import connection
from streams import subjects as s

log = logging.getLogger(__name__)


async def apply_batch(conn: asyncpg.Connection, records: list[RecordedEvent]) -> int:
    """Apply the events newer than the stored position; returns the new position."""
    async with conn.transaction():
        await folds.lock(conn)
        position = await folds.position(conn)
        fresh = [r for r in records if r.seq > position]
        if fresh:
            await folds.apply(conn, fresh)
            position = fresh[-1].seq
            await folds.set_position(conn, position)
        return position


class Projector:
    def __init__(
        self, *, nats_url: str, database_url: str, batch: int = 1000, poll_s: float = 1.0, gather_s: float = 0.05
    ) -> None:
        self.nats_url = nats_url
        self.database_url = database_url
        self.batch = batch
        self.poll_s = poll_s
        self.gather_s = gather_s
        self.position = 0
        self.head = 0  # the log's last sequence, as the scheduler announced it
        metrics.watch(self)
        self._stopping = asyncio.Event()
        self._nc: NATS | None = None
        self._pool: asyncpg.Pool | None = None

    async def stop(self) -> None:
        self._stopping.set()

    async def readiness(self) -> Readiness:
        """Ready while it hears NATS (the scheduler's wake-ups) and reaches PostgreSQL."""
        if self._nc is None or self._pool is None:
            return NOT_STARTED
        return Readiness(
            checks={"nats": self._nc.is_connected, "database": await db.reachable(self._pool)},
            details={"position": self.position},
        )

    async def run(self) -> None:
        async with connection.opened(self.nats_url, "projector") as nc, db.pool(self.database_url, max_size=2) as pool:
            self._nc, self._pool = nc, pool
            while not self._stopping.is_set():
                try:
                    await self._follow(pool)
                except Exception:
                    log.exception("projector: restarting after an error")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), 1.0)

    async def _follow(self, pool: asyncpg.Pool) -> None:
        """Fold everything after the stored position, then again whenever the log grows.

        What is folded is always read from PostgreSQL in log order. The scheduler's core-NATS
        `tessera.committed` message after each commit only says when to look, so one that is lost
        costs at most the poll interval, never an event.

        After a catch-up that folded something, it lets the log grow for `gather_s` before it
        looks again. The first event after a quiet spell is folded at once; under load, each
        transaction folds a larger batch, and a job that went from queued to completed within it
        is written once instead of once per transition.
        """
        assert self._nc is not None
        await self._forget_old_consumer()
        grown = asyncio.Event()

        async def on_commit(msg: Msg) -> None:
            self.head = max(self.head, int(msg.data or 0))
            grown.set()

        sub = await self._nc.subscribe(s.COMMITTED, cb=on_commit)
        try:
            while not self._stopping.is_set():
                grown.clear()
                before = self.position
                async with pool.acquire() as conn:
                    await self._catch_up(conn)
                if self.position != before:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), self.gather_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(grown.wait(), self.poll_s)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _forget_old_consumer(self) -> None:
        """An earlier projector followed a durable consumer on the events stream; remove it."""
        assert self._nc is not None
        with contextlib.suppress(NotFoundError, nats.errors.Error):
            await self._nc.jetstream().delete_consumer(s.EVENTS_STREAM, "projector")

    async def _catch_up(self, conn: asyncpg.Connection) -> None:
        while True:
            records = await store.load_after(conn, self.position, self.batch)
            if records:
                self.position = await apply_batch(conn, records)
            if len(records) < self.batch:  # that was the end of the log
                return


__all__ = ["Projector", "apply_batch", "decode_recorded"]
