"""The scheduler process: leader election, the command loop, batching and commit.

One scheduler writes at a time. It holds a PostgreSQL session advisory lock and writes every
event through that same session, so a writer that lost its session (and with it the lock)
cannot write at all; the (stream, version) uniqueness of the event table fences anything else.
A standby polls for the lock and takes over when the leader's session ends.

`Scheduler` is this module's process (connections, the run loop, a term's fetch loop) on top of
its parts: `scheduler.leadership` (the lock, loading the state from PostgreSQL), `scheduler.batch`
(deciding and committing one batch of commands) and `scheduler.housekeeping` (relay catch-up,
re-dispatch, the workers bucket, artifact expiry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from base import db
from base.health import Readiness
from scheduler import metrics
from scheduler.housekeeping import Housekeeping
from scheduler.leadership import Role
from scheduler.outbox import Outbox
from streams import connection, topology
from streams import subjects as s

log = logging.getLogger(__name__)


class Scheduler(Housekeeping):
    """`run()` until `stop()`: standby until it holds the lock, then leader until it loses it."""

    async def readiness(self) -> Readiness:
        """Ready as a leader once its state is loaded, or as a standby, while NATS and its session
        are up. The session is not queried here: a leader's is busy with its commits."""
        nc, session, role = self._nc, self._session, self.role
        return Readiness(
            checks={
                "nats": nc is not None and nc.is_connected,
                "database": session is not None and not session.is_closed(),
                "state": role in (Role.LEADER, Role.STANDBY),
            },
            details={"role": role.value, "name": self.name},
        )

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            metrics.unwatch(self)  # a stopped scheduler is neither leader nor standby

    async def _run(self) -> None:
        async with connection.opened(
            self.nats_url, self.name, disconnected_cb=self._disconnected, reconnected_cb=self._reconnected
        ) as nc:
            self._nc = nc
            while not self._stopping.is_set():
                async with contextlib.AsyncExitStack() as session:
                    try:
                        conn = await session.enter_async_context(
                            db.connection(
                                self.database_url, json_codec=False, application_name=self.name, close_timeout_s=2
                            )
                        )
                    except (OSError, asyncpg.PostgresError) as exc:
                        log.warning("%s: cannot reach PostgreSQL (%s); retrying", self.name, exc)
                        await self._sleep(1.0)
                        continue
                    self._session = conn
                    try:
                        if await self._acquire(conn):
                            self._holds_lock = True
                            await self._lead(conn)
                    except Exception:  # whatever ended it, the state is rebuilt from PostgreSQL next time
                        log.exception("%s: leadership ended", self.name)
                        await self._sleep(0.5)
                    finally:
                        self.is_leader.clear()
                        self._session, self._holds_lock = None, False

    async def _disconnected(self) -> None:
        log.warning("%s: lost its NATS connection; no worker is judged by its silence until it is back", self.name)
        self._connected = False
        if self.state is not None:
            self.state.connection_lost()

    async def _reconnected(self) -> None:
        log.info("%s: NATS connection back", self.name)
        self._connected = True
        if self.state is not None:
            self.state.connection_back()
        if self._feed is not None:
            self._feed.reconnected()

    async def _lead(self, conn: asyncpg.Connection) -> None:
        assert self._nc is not None
        js = self._nc.jetstream()
        self.state = await self._load(conn)
        outbox = Outbox(self._nc, js)
        tasks = [
            asyncio.create_task(outbox.run(), name="scheduler-outbox"),
            asyncio.create_task(self._watch_workers(js), name="scheduler-workers"),
            asyncio.create_task(self._watch_stalls(), name="scheduler-stalls"),
        ]
        try:
            await self._catch_up(conn, outbox)
            self._redispatch_unstarted(outbox)
            # Explicit acks, never AckPolicy.ALL: a new leader's first ack would otherwise also
            # acknowledge the commands the dead leader had fetched and not committed.
            sub = await topology.durable_pull(
                js,
                subject=s.COMMANDS_ALL,
                durable=s.SCHEDULER_CONSUMER,
                stream=s.COMMANDS_STREAM,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=5,
                    max_ack_pending=100_000,
                    deliver_policy=DeliverPolicy.ALL,
                    description="The scheduler (leader only) consumes every command",
                ),
            )
            # Every command up to the consumer's acknowledged floor was handled by a leader before.
            info = await sub.consumer_info()
            self.state.commands_seq = info.ack_floor.stream_seq if info.ack_floor else 0
            self.terms += 1
            self.is_leader.set()
            self._chores_due = {}
            next_position_check = 0.0
            idle = False
            while not self._stopping.is_set():
                await self._chores(conn, js, outbox)
                for task in tasks:
                    if task.done():
                        task.result()  # a failed side task ends leadership with its error
                stored_seq = None
                try:
                    if idle and time.monotonic() >= next_position_check:
                        # The stream's end before an empty fetch: then every command up to it was handled.
                        next_position_check = time.monotonic() + 1.0
                        stored_seq = (await js.stream_info(s.COMMANDS_STREAM)).state.last_seq
                    msgs = await sub.fetch(self.settings.command_batch, timeout=0.25)
                except TimeoutError:
                    msgs = []
                except nats.errors.Error as exc:  # NATS is away: keep the lead, try again shortly
                    log.warning("%s: cannot fetch commands (%r); retrying", self.name, exc)
                    await self._sleep(0.25)
                    stored_seq, msgs = None, []
                idle = not msgs
                if idle and stored_seq is not None:
                    self.state.commands_seq = max(self.state.commands_seq, stored_seq)
                await self._process(conn, js, outbox, msgs)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(outbox.drained(), 5)
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for task, result in zip(tasks, results, strict=True):
                if isinstance(result, Exception):
                    log.error("%s: task %s failed: %r", self.name, task.get_name(), result)
