"""One batch of commands: decode, decide against the in-memory state, commit in one transaction,
reply, acknowledge; a command that cannot be handled or stored is set aside (dead-lettered).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import asyncpg
import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from base.logs import about_job
from events import store
from events.types import user_stream_id
from scheduler import metrics, queries
from scheduler.admission import RefusalCode
from scheduler.leadership import Leadership
from scheduler.outbox import Outbox, Outgoing, terminal_notifications
from streams import subjects as s
from streams.messages import (
    AnyCommand,
    ChangeUserPlan,
    CreateUser,
    Decision,
    DeleteUpload,
    IssueApiKey,
    RegisterUser,
    RevokeKey,
    StoreUpload,
    SubmitJob,
    command_decoder,
    encode,
    subject_of,
)

log = logging.getLogger(__name__)


class _Poisoned(Exception):
    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error


class Batching(Leadership):
    """The handling of one fetched batch of commands, as `scheduler.service.Scheduler` runs it."""

    _alive_at = 0.0  # when `_watch_stalls` last ran (monotonic); 0 before it first did in this term
    _stalled = False  # it saw the loop stand still since the fleet was last ticked

    @property
    def _stall_s(self) -> float:
        """The event loop standing still longer than this is the scheduler's silence, not the workers'."""
        return max(1.0, self.settings.worker_timeout_s / 4)

    async def _watch_stalls(self, every_s: float = 0.1) -> None:
        """Note when this process's event loop stood still. A slow commit or fetch is not that (the
        loop reads heartbeats while it waits); a blocked loop is, and the tick must not count it."""
        self._alive_at, self._stalled = 0.0, False
        while True:
            before = time.monotonic()
            await asyncio.sleep(every_s)
            self._alive_at = time.monotonic()
            if self._alive_at - before - every_s > self._stall_s:
                self._stalled = True

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
        if msgs:
            metrics.BATCH.observe(len(msgs))
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
        assert self.state is not None  # loaded before the first batch; a reload replaces it, never clears it
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

    async def _set_aside(self, js: JetStreamContext, msg: Msg, reason: str, refusal: Decision) -> None:
        """Dead-letter a command and tell its sender (if it waits for an answer) it was refused."""
        await self._dead_letter(js, msg, reason)
        reply_to = (msg.headers or {}).get(s.HDR_REPLY_TO)
        if reply_to and s.is_reply(reply_to) and self._nc is not None:
            await self._nc.publish(reply_to, encode(refusal))

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
            about_job(getattr(command, "job_id", None))  # what a handler logs names its job
            try:
                replied = len(state.out.effects.replies)
                handle(command, reply_to, cause)
                if type(command) is SubmitJob:
                    metrics.submitted(command, state.out.effects.replies, replied)
            except Exception as exc:  # a bug or a poisonous command: move it aside, keep serving
                raise _Poisoned(index, exc) from exc
        about_job(None)
        now = time.monotonic()
        if self._stalled or (self._alive_at and now - self._alive_at > self._stall_s):
            # The event loop stood still (CPU starvation, a long pause): heartbeats sent meanwhile
            # wait unread in its socket, so the workers' silence over that time says nothing.
            log.warning("%s: its event loop stood still; no worker is judged by its silence over that time", self.name)
            state.fleet.judge_afresh(now)
            self._stalled = False
        state.tick(now)
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
            if isinstance(command, CreateUser | ChangeUserPlan | RegisterUser):
                wanted.add(user_stream_id(command.platform, command.platform_user_id))
            if isinstance(command, IssueApiKey | RevokeKey) and command.user_id is not None:
                wanted.add(command.user_id)
            if isinstance(command, DeleteUpload) or (isinstance(command, StoreUpload) and _redelivered(msg)):
                wanted.add(command.upload_id)
            job_id = getattr(command, "job_id", None)
            if job_id is not None and job_id not in state.jobs:
                wanted.add(job_id)
            webhook_id = getattr(command, "webhook_id", None)
            if webhook_id is not None and webhook_id not in state.webhooks.endpoints:
                wanted.add(webhook_id)
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
        started = time.perf_counter()
        records = await queries.commit_batch(
            conn,
            effects.pending,
            activated=effects.activated,
            finished=effects.finished,
            relayed_seq=outbox.relayed_seq,
            owners=state.jobs,
        )
        metrics.committed(self, records, outbox, started)
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
