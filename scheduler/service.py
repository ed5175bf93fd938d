"""The scheduler process: leader election, the command loop, batching and commit.

One scheduler writes at a time. It holds a PostgreSQL session advisory lock and writes every
event through that same session, so a writer that lost its session (and with it the lock)
cannot write at all; the (stream, version) uniqueness of the event table fences anything else.
A standby polls for the lock and takes over when the leader's session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from datetime import timedelta
from enum import StrEnum

import asyncpg
import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from base import db
from base.catalog import Catalog
from base.config import Settings
from base.health import Readiness
from events import store
from events.errors import ConcurrencyError
from events.job import JobStatus, fold
from events.types import JobCancelled, JobCompleted, JobFailed, JobSubmitted, StreamType, type_name, user_stream_id
from projector import queries as read_models
from scheduler import queries
from scheduler.admission import RefusalCode
from scheduler.outbox import Outbox, Outgoing, terminal_notifications
from scheduler.policy import PolicyConfig
from scheduler.state import Limits, SchedulerState
from streams import connection, topology
from streams import subjects as s
from streams.messages import (
    AnyCommand,
    ChangeUserPlan,
    CreateUser,
    Decision,
    DeleteUpload,
    IssueApiKey,
    RevokeKey,
    StoreUpload,
    SubmitJob,
    WorkerStatus,
    command_decoder,
    encode,
    subject_of,
)
from streams.workers_feed import WorkersFeed

log = logging.getLogger(__name__)


class _Poisoned(Exception):
    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error


class Role(StrEnum):
    """What a scheduler is doing, as its `/readyz` says."""

    CONNECTING = "connecting"  # no database session yet
    STANDBY = "standby"  # another scheduler leads; it polls for the lock
    LOADING = "loading"  # it holds the lock and loads its state
    LEADER = "leader"


class Scheduler:
    """`run()` until `stop()`: standby until it holds the lock, then leader until it loses it."""

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

    async def stop(self) -> None:
        self._stopping.set()

    @property
    def role(self) -> Role:
        if self.is_leader.is_set():
            return Role.LEADER
        if self._holds_lock:
            return Role.LOADING
        return Role.CONNECTING if self._session is None else Role.STANDBY

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

    # --- leading -----------------------------------------------------------------------------

    async def _load(self, conn: asyncpg.Connection) -> SchedulerState:
        settings = self.settings
        state = SchedulerState(
            Limits(
                max_attempts=settings.max_attempts,
                worker_timeout_s=settings.worker_timeout_s,
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
            used=await store.tokens_charged(conn, since),
            execution_s=await store.execution_times(conn),
            recent_requests=await store.recent_submits(conn),
            uploads=await store.uploads_counted(conn, since),
        )
        if not self._connected:
            state.connection_lost()
        return state

    async def _lead(self, conn: asyncpg.Connection) -> None:
        assert self._nc is not None
        js = self._nc.jetstream()
        self.state = await self._load(conn)
        outbox = Outbox(self._nc, js)
        tasks = [
            asyncio.create_task(outbox.run(), name="scheduler-outbox"),
            asyncio.create_task(self._watch_workers(js), name="scheduler-workers"),
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
            next_expiry_check = 0.0
            next_position_check = 0.0
            idle = False
            while not self._stopping.is_set():
                if time.monotonic() >= next_expiry_check:
                    next_expiry_check = time.monotonic() + self.settings.expiry_check_s
                    if not await self._expire_artifacts(conn, outbox):
                        next_expiry_check = time.monotonic() + 600
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

    async def _expire_artifacts(self, conn: asyncpg.Connection, outbox: Outbox) -> bool:
        """Record and carry out the expiry of artifacts and uploads past their time, in a commit of
        its own, so a failure here cannot stop the scheduling of jobs. False when it failed."""
        expired = await read_models.expired_artifacts(conn)
        uploads = await read_models.expired_uploads(conn)
        if not expired and not uploads:
            return True
        assert self.state is not None
        try:
            self.state.expire_artifacts(expired)
            self.state.expire_uploads(uploads)
            await self._commit(conn, outbox)
            return True
        except (asyncpg.PostgresError, ConcurrencyError):
            log.exception("%s: recording artifact expiry failed; trying again later", self.name)
            await self._reload(conn)  # drop the half-made decision
            return False

    async def _catch_up(self, conn: asyncpg.Connection, outbox: Outbox) -> None:
        """Relay the committed events a previous leader may not have published."""
        assert self.state is not None
        position = await queries.relay_position(conn)
        while True:
            records = await store.load_after(conn, position, 2000)
            if not records:
                break
            notifications = []
            terminal_ids = [r.stream_id for r in records if r.stream_type == "job" and r.type in _TERMINAL_TYPES]
            if terminal_ids:
                by_job: dict[uuid.UUID, list] = {}
                for rec in await store.load_streams(conn, terminal_ids):
                    by_job.setdefault(rec.stream_id, []).append(rec)
                jobs = {job_id: fold(recs) for job_id, recs in by_job.items()}
                notifications = terminal_notifications(records, jobs)
            outbox.put(Outgoing(events=records, notifications=notifications))
            position = records[-1].seq
        log.info("%s: relay caught up to seq %d", self.name, position)

    def _redispatch_unstarted(self, outbox: Outbox) -> None:
        """A dispatch committed just before a crash may never have been published: send it again."""
        assert self.state is not None
        pending = [
            (job.worker_id, self.state.dispatch_message(job))
            for job in self.state.jobs.values()
            if job.status is JobStatus.RUNNING and job.started_at is None and job.worker_id
        ]
        if pending:
            outbox.put(Outgoing(dispatches=pending))

    async def _watch_workers(self, js: JetStreamContext) -> None:
        def seen(status: WorkerStatus) -> None:
            if self.state is not None:
                self.state.worker_seen(status)

        def gone(worker_id: str) -> None:
            if self.state is not None:
                self.state.worker_gone(worker_id)

        def known() -> None:  # the end of the bucket's current contents: the fleet is known
            if self.state is not None:
                self.state.fleet_known = True

        self._feed = WorkersFeed(js, on_status=seen, on_gone=gone, on_known=known)
        try:
            await self._feed.run()
        finally:
            self._feed = None

    # --- one batch ---------------------------------------------------------------------------

    async def _process(self, conn: asyncpg.Connection, js: JetStreamContext, outbox: Outbox, msgs: list[Msg]) -> None:
        commands: list[tuple[int, AnyCommand, Msg]] = []
        for index, msg in enumerate(msgs):
            try:
                command = command_decoder.decode(msg.data)
            except msgspec.DecodeError as exc:
                await self._dead_letter(js, msg, f"undecodable command: {exc}")
                continue
            if not _on_its_subject(command, msg.subject):
                await self._dead_letter(js, msg, f"a {type(command).__name__} may not arrive on {msg.subject}")
                continue
            commands.append((index, command, msg))
        loaded = await self._prefetch(conn, commands)
        while True:
            try:
                self._decide(commands)
                break
            except _Poisoned as poisoned:
                index = poisoned.index
                msg = next(m for i, _, m in commands if i == index)
                log.exception("%s: command on %s could not be handled", self.name, msg.subject, exc_info=poisoned.error)
                await self._set_aside(js, msg, f"handler failed: {poisoned.error!r}", _HANDLER_FAILED)
                commands = [c for c in commands if c[0] != index]
                await self._reload(conn)  # the failed handler may have left half a decision
                loaded = await self._prefetch(conn, commands)
        try:
            await self._commit(conn, outbox)
        except asyncpg.DataError as exc:  # a value PostgreSQL cannot store: find its command
            log.warning(
                "%s: a batch of %d command(s) could not be stored (%s); committing them one by one",
                self.name,
                len(commands),
                exc,
            )
            loaded += await self._commit_singly(conn, js, outbox, commands)
        self.state.forget_terminal(loaded)  # finished jobs loaded only to answer a duplicate command
        self.state.uploads.clear()  # loaded for this batch's commands only
        for msg in msgs:  # committed (or moved aside): done with
            await msg.ack()
        if msgs:
            self.state.commands_seq = max(self.state.commands_seq, *(m.metadata.sequence.stream for m in msgs))

    async def _commit_singly(
        self,
        conn: asyncpg.Connection,
        js: JetStreamContext,
        outbox: Outbox,
        commands: list[tuple[int, AnyCommand, Msg]],
    ) -> list[uuid.UUID]:
        """Decide and commit each command of a batch that could not be stored on its own, so the
        one that cannot be stored is refused and set aside and every other one is committed."""
        await self._reload(conn)  # nothing of the failed batch was stored
        loaded: list[uuid.UUID] = []
        for command in commands:
            loaded += await self._prefetch(conn, [command])
            try:
                self._decide([command])
                await self._commit(conn, outbox)
            except _Poisoned as poisoned:
                await self._set_aside(js, command[2], f"handler failed: {poisoned.error!r}", _HANDLER_FAILED)
                await self._reload(conn)
            except asyncpg.DataError as exc:
                await self._set_aside(
                    js,
                    command[2],
                    f"cannot be stored: {exc}",
                    Decision(
                        ok=False,
                        code=RefusalCode.UNSTORABLE_INPUT,
                        detail=f"the request holds a value that cannot be stored: {exc}",
                    ),
                )
                await self._reload(conn)
        return loaded

    async def _reload(self, conn: asyncpg.Connection) -> None:
        """Throw the in-memory state away and rebuild it from PostgreSQL, keeping the fleet."""
        before = self.state
        self.state = await self._load(conn)
        self._keep_fleet(before)

    async def _set_aside(self, js: JetStreamContext, msg: Msg, reason: str, refusal: Decision) -> None:
        """Dead-letter a command and tell its sender (if it waits for an answer) it was refused."""
        await self._dead_letter(js, msg, reason)
        reply_to = (msg.headers or {}).get(s.HDR_REPLY_TO)
        if reply_to and s.is_reply(reply_to) and self._nc is not None:
            await self._nc.publish(reply_to, encode(refusal))

    def _keep_fleet(self, old: SchedulerState | None) -> None:
        """After a reload, keep knowing the workers (the bucket only tells again at their next heartbeat)."""
        if old is None or self.state is None:
            return
        for view in old.workers.values():
            if not view.gone:
                self.state.worker_seen(view.status, view.last_seen)
        self.state.fleet_known = old.fleet_known
        self.state.commands_seq = old.commands_seq

    def _decide(self, commands: list[tuple[int, AnyCommand, Msg]]) -> None:
        state = self.state
        assert state is not None
        for index, command, msg in commands:
            cause = (msg.headers or {}).get(s.HDR_MSG_ID) or f"{msg.subject}#{msg.metadata.sequence.stream}"
            reply_to = (msg.headers or {}).get(s.HDR_REPLY_TO)
            if reply_to is not None and not s.is_reply(reply_to):
                reply_to = None  # the scheduler answers on reply subjects only, never where a sender points it
            handle = state.handlers.get(type(command))  # the state's dispatch table: one handler per command type
            if handle is None:
                continue
            try:
                handle(command, reply_to, cause)
            except Exception as exc:  # a bug or a poisonous command: move it aside, keep serving
                raise _Poisoned(index, exc) from exc
        state.tick()
        state.schedule()

    async def _prefetch(self, conn: asyncpg.Connection, commands: list[tuple[int, AnyCommand, Msg]]) -> list[uuid.UUID]:
        """Load the users and finished jobs this batch refers to that are not in memory; returns their ids.

        A submit's job id is looked up only when it could name an existing job: an id derived from
        an Idempotency-Key (not a random version-4 UUID), or a command delivered more than once.
        """
        state = self.state
        assert state is not None
        wanted: set[uuid.UUID] = set()
        for _, command, msg in commands:
            if isinstance(command, SubmitJob):
                if command.user_id not in state.users:
                    wanted.add(command.user_id)
                if command.job_id not in state.jobs and (command.job_id.version != 4 or _redelivered(msg)):
                    wanted.add(command.job_id)
                continue
            if isinstance(command, CreateUser | ChangeUserPlan):
                wanted.add(user_stream_id(command.platform, command.platform_user_id))
            if isinstance(command, IssueApiKey | RevokeKey) and command.user_id is not None:
                wanted.add(command.user_id)
            if isinstance(command, DeleteUpload) or (isinstance(command, StoreUpload) and _redelivered(msg)):
                wanted.add(command.upload_id)
            job_id = getattr(command, "job_id", None)
            if job_id is not None and job_id not in state.jobs:
                wanted.add(job_id)
        wanted -= set(state.users)
        if wanted:
            for rec in await store.load_streams(conn, wanted):
                state.apply(rec)
        return list(wanted)

    async def _commit(self, conn: asyncpg.Connection, outbox: Outbox) -> None:
        state = self.state
        assert state is not None and self._nc is not None
        effects = state.take_effects()
        if not (effects.pending or effects.replies or effects.purge_workers):
            return
        records = await queries.commit_batch(
            conn,
            effects.pending,
            activated=effects.activated,
            finished=effects.finished,
            relayed_seq=outbox.relayed_seq,
        )
        last_seq = records[-1].seq if records else 0
        if last_seq:
            await self._nc.publish(s.COMMITTED, str(last_seq).encode())  # wakes the projector
        for reply_to, job_id, decision in effects.replies:
            if job_id is not None and job_id in state.jobs:
                decision = msgspec.structs.replace(decision, job=state.summary(state.jobs[job_id]), seq=last_seq)
            else:
                decision = msgspec.structs.replace(decision, seq=last_seq)
            await self._nc.publish(reply_to, encode(decision))
        outbox.put(
            Outgoing(
                dispatches=effects.dispatches,
                events=records,
                notifications=terminal_notifications(records, state.jobs),
                purge_workers=effects.purge_workers,
                discard_objects=effects.discard_objects,
            )
        )
        for worker_id, control in effects.controls:
            await self._nc.publish(s.control(worker_id), encode(control))
        state.forget_terminal(effects.finished)

    async def _dead_letter(self, js: JetStreamContext, msg: Msg, reason: str) -> None:
        log.error("%s: moving a command from %s aside: %s", self.name, msg.subject, reason)
        headers = {s.HDR_ERROR: reason[:500], "Tessera-Original-Subject": msg.subject}
        await js.publish(s.dead_letter(msg.subject), msg.data, headers=headers)


# The answer to a command whose handler raised (a bug): it is set aside, the sender told at once.
_HANDLER_FAILED = Decision(
    ok=False, code=RefusalCode.COMMAND_FAILED, detail="the scheduler could not handle this request; it was set aside"
)

_TERMINAL_TYPES = {type_name(JobCompleted), type_name(JobFailed), type_name(JobCancelled)}


def _on_its_subject(command: AnyCommand, subject: str) -> bool:
    """Whether `command` came on the subject its kind (and, for a report, its worker) must use."""
    try:
        return subject_of(command) == subject
    except ValueError:  # a worker id that cannot be a subject token
        return False


def _redelivered(msg: Msg) -> bool:
    try:
        return msg.metadata.num_delivered > 1
    except Exception:  # not a JetStream message: be safe
        return True
