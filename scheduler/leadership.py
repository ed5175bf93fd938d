"""Taking the lead: the PostgreSQL session advisory lock, and the state loaded from PostgreSQL.

The base of `scheduler.service.Scheduler`: what a scheduler is (its settings, its connections, the
state it leads with), how it waits for the lock, and how it builds its in-memory state from the
event store (at the start of a term, and again after a decision that could not be committed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import timedelta
from enum import StrEnum

import asyncpg
from nats.aio.client import Client as NATS

from base.catalog import Catalog
from base.config import Settings
from events import store
from events.types import JobSubmitted, StreamType
from scheduler import metrics, queries
from scheduler.policy import PolicyConfig
from scheduler.state import Limits, SchedulerState
from streams.workers_feed import WorkersFeed

log = logging.getLogger(__name__)


class Role(StrEnum):
    """What a scheduler is doing, as its `/readyz` says."""

    CONNECTING = "connecting"  # no database session yet
    STANDBY = "standby"  # another scheduler leads; it polls for the lock
    LOADING = "loading"  # it holds the lock and loads its state
    LEADER = "leader"


class Leadership:
    """A scheduler's fields, the lock and the loading of its state (`scheduler.service.Scheduler`)."""

    def __init__(self, settings: Settings, *, nats_url: str, database_url: str, name: str | None = None) -> None:
        self.settings = settings
        self.nats_url = nats_url
        self.database_url = database_url
        self.name = name or f"scheduler-{uuid.uuid4().hex[:8]}"
        self.is_leader = asyncio.Event()
        self._stopping = asyncio.Event()
        self._nc: NATS | None = None
        self.state: SchedulerState | None = None
        self._feed: WorkersFeed | None = None
        self.terms = 0  # how many times this process became the leader
        self._connected = True  # to NATS; kept here too, as a new leader's state starts from it
        self.catalog = Catalog.load(settings.catalog_file)
        self._session: asyncpg.Connection | None = None  # the database session the lock is held or sought on
        self._holds_lock = False
        metrics.watch(self)  # its role, and while it leads its queue and fleet, at /metrics

    async def stop(self) -> None:
        self._stopping.set()

    @property
    def role(self) -> Role:
        if self.is_leader.is_set():
            return Role.LEADER
        if self._holds_lock:
            return Role.LOADING
        return Role.CONNECTING if self._session is None else Role.STANDBY

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _acquire(self, conn: asyncpg.Connection) -> bool:
        announced = False
        while not self._stopping.is_set():
            if await queries.try_lead(conn):
                log.info("%s: holds the scheduler lock; leading", self.name)
                return True
            if not announced:
                log.info("%s: another scheduler leads; standing by", self.name)
                announced = True
            await self._sleep(0.5)
        return False

    async def _load(self, conn: asyncpg.Connection) -> SchedulerState:
        settings = self.settings
        state = SchedulerState(
            Limits(
                max_attempts=settings.max_attempts,
                worker_timeout_s=settings.worker_timeout_s,
                worker_grace_s=settings.worker_grace_s,
                reconcile_grace_s=settings.reconcile_grace_s,
                queue_timeout_s=settings.queue_timeout_s,
                quota_timezone=settings.quota_timezone,
                policy=PolicyConfig(
                    aging_step_s=settings.aging_step_s,
                    affinity_hold_s=settings.affinity_hold_s,
                    starvation_s=settings.starvation_s,
                    starvation_step_s=settings.starvation_step_s,
                ),
            ),
            catalog=self.catalog,
        )
        active = await queries.load_active_jobs(conn)
        users = {r.data.user_id for r in active if isinstance(r.data, JobSubmitted)}
        records = (
            await store.load_stream_type(conn, StreamType.PLAN)
            + await store.load_stream_type(conn, StreamType.FRONTEND)
            + await store.load_streams(conn, users)
            + active
        )
        records.sort(key=lambda r: r.seq)
        since = state.quota_day() - timedelta(days=1)
        state.load(
            records,
            await store.head(conn),
            used=await queries.tokens_charged(conn, since),
            execution_s=await store.execution_times(conn),
            recent_requests=await store.recent_submits(conn),
            uploads=await store.uploads_counted(conn, since),
        )
        if not self._connected:
            state.connection_lost()
        return state

    async def _reload(self, conn: asyncpg.Connection) -> None:
        """Throw the in-memory state away and rebuild it from PostgreSQL, keeping the fleet."""
        before = self.state
        self.state = await self._load(conn)
        self._keep_fleet(before)

    def _keep_fleet(self, old: SchedulerState | None) -> None:
        """After a reload, keep knowing the workers (the bucket only tells again at their next heartbeat)."""
        if old is None or self.state is None:
            return
        for view in old.workers.values():
            if not view.gone:
                self.state.worker_seen(view.status, view.last_seen)
        self.state.fleet_known = old.fleet_known
        self.state.commands_seq = old.commands_seq
