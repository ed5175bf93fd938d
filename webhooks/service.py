"""The webhook service's process: read the event log, make messages, deliver them, answer the gateway.

Its durable state is in PostgreSQL: the log position it has turned into messages (moved in the
same transaction as the messages are stored, so each event makes its messages once), and each
message with its attempts. Restarting it, or NATS, loses nothing: the log is re-read from the
position, due messages are tried again. NATS only wakes it (`tessera.committed`), carries the
progress reports it turns into `progress` messages (ephemeral, at most one per job every 500 ms),
the disable commands it sends the scheduler, and the gateway's questions about delivery logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from base import db
from base.addresses import Allowlist
from base.config import Settings
from base.health import NOT_STARTED, Readiness
from events import store as events
from events.types import JobSubmitted, RecordedEvent, StreamType
from gateway.links import LinkSigner
from gateway.webhook_secrets import SecretBox
from streams import connection
from streams import subjects as s
from streams.messages import Progress, UpdateWebhook, encode
from streams.webhook_messages import Deliveries, DeliveriesRequest, ReplayAnswer, ReplayRequest
from webhooks import store
from webhooks.client import Resolver, Sender, system_resolver
from webhooks.delivery import Clock, Deliverer, utc_now
from webhooks.intake import Endpoints, Intake, kind_of

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.5


class WebhookService:
    def __init__(
        self,
        settings: Settings,
        *,
        nats_url: str,
        database_url: str,
        clock: Clock = utc_now,
        resolver: Resolver = system_resolver,
        poll_s: float = 1.0,
        batch: int = 500,
    ) -> None:
        self.settings = settings
        self.nats_url = nats_url
        self.database_url = database_url
        self.clock = clock
        self.resolver = resolver
        self.poll_s = poll_s
        self.batch = batch
        self.position = 0
        self.endpoints = Endpoints()
        base_url = (settings.public_url or f"http://{settings.http_host}:{settings.http_port}").rstrip("/")
        self.links = LinkSigner(settings.url_signing_key, settings.signed_url_ttl_s)
        self.intake = Intake(self.endpoints, base_url, self.links)
        self.box = SecretBox(settings.url_signing_key or "")
        self.deliverer: Deliverer | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._nc: NATS | None = None
        self._pool: asyncpg.Pool | None = None
        self._progress_at: dict[uuid.UUID, float] = {}

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def readiness(self) -> Readiness:
        if self._nc is None or self._pool is None:
            return NOT_STARTED
        return Readiness(
            checks={
                "nats": self._nc.is_connected,
                "database": await db.reachable(self._pool),
                "signing key": bool(self.settings.url_signing_key),
            },
            details={"position": self.position},
        )

    async def run(self) -> None:
        if not self.settings.url_signing_key:
            log.error("webhooks: TESSERA_URL_SIGNING_KEY is not set; endpoint secrets cannot be opened")
        sender = Sender(
            allow_http=self.settings.webhook_allow_http,
            allowlist=Allowlist(self.settings.webhook_allowlist),
            resolver=self.resolver,
        )
        async with (
            connection.opened(self.nats_url, "webhooks") as nc,
            db.pool(self.database_url, max_size=4) as pool,
        ):
            self._nc, self._pool = nc, pool
            self.deliverer = Deliverer(pool, self.endpoints, sender, self.box, self._disable, clock=self.clock)
            subs = [
                await nc.subscribe(s.COMMITTED, cb=self._on_commit),
                await nc.subscribe(s.PROGRESS_ALL, cb=self._on_progress),
                await nc.subscribe(s.WEBHOOK_DELIVERIES, cb=self._on_deliveries),
                await nc.subscribe(s.WEBHOOK_REPLAY, cb=self._on_replay),
            ]
            try:
                await self._loop()
            finally:
                for sub in subs:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                await sender.close()

    async def _loop(self) -> None:
        assert self._pool is not None and self.deliverer is not None
        loaded = False
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                if not loaded:
                    await self.load()
                    loaded = True
                await self.take_in()
                await self.deliverer.deliver_due()
            except Exception:
                log.exception("webhooks: starting over after an error")
                loaded = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def load(self) -> None:
        """The position and, as of it, every endpoint."""
        assert self._pool is not None
        self.endpoints.by_id.clear()
        async with self._pool.acquire() as conn:
            self.position = await store.position(conn)
            for rec in await events.load_stream_type(conn, StreamType.WEBHOOK.value):
                if rec.seq <= self.position:
                    self.endpoints.apply(rec)

    async def take_in(self) -> None:
        """Turn the events after the position into messages, a batch per transaction."""
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            while True:
                records = await events.load_after(conn, self.position, self.batch)
                if not records:
                    return
                stopped: list[uuid.UUID] = []
                messages = []
                streams: dict[uuid.UUID, list[RecordedEvent]] = {}
                for rec in records:
                    if rec.stream_type == StreamType.WEBHOOK:
                        gone = self.endpoints.apply(rec)
                        stopped += [gone] if gone else []
                        continue
                    if isinstance(rec.data, JobSubmitted):
                        self.intake.note(rec.stream_id, rec.data)
                        continue
                    kind = kind_of(rec.data)
                    if kind is None or rec.stream_type != StreamType.JOB:
                        continue
                    if self.intake.nobody_hears(rec.stream_id, kind):
                        continue
                    if rec.stream_id not in streams:
                        streams[rec.stream_id] = await events.load_stream(conn, rec.stream_id)
                    upto = [r for r in streams[rec.stream_id] if r.version <= rec.version]
                    messages += self.intake.messages(kind, upto, str(rec.event_id), rec.recorded_at)
                async with conn.transaction():
                    await store.add(conn, messages, records[-1].seq)
                    for endpoint_id in stopped:
                        await store.cancel_pending(conn, str(endpoint_id))
                self.position = records[-1].seq

    async def _disable(self, endpoint_id: uuid.UUID, user_id: uuid.UUID, reason: str) -> None:
        assert self._nc is not None
        command = UpdateWebhook(command_id=uuid.uuid4(), webhook_id=endpoint_id, user_id=user_id, disable_reason=reason)
        log.warning("webhooks: disabling %s: %s", endpoint_id, reason)
        await self._nc.jetstream().publish(
            s.CMD_WEBHOOK_UPDATE, encode(command), headers={s.HDR_MSG_ID: f"webhook-disable:{command.command_id}"}
        )

    # --- NATS callbacks ---------------------------------------------------------------------------

    async def _on_commit(self, _msg: Msg) -> None:
        self._wake.set()

    async def _on_progress(self, msg: Msg) -> None:
        """A progress report: a `progress` message for the job's receivers, at most one per 500 ms."""
        try:
            progress = msgspec.json.decode(msg.data, type=Progress)
        except msgspec.DecodeError:
            return
        now = time.monotonic()
        if now - self._progress_at.get(progress.job_id, 0.0) < PROGRESS_INTERVAL_S or self._pool is None:
            return
        self._progress_at[progress.job_id] = now
        if len(self._progress_at) > 10_000:  # forget jobs long done
            self._progress_at = {k: v for k, v in self._progress_at.items() if now - v < 60}
        try:
            async with self._pool.acquire() as conn:
                records = await events.load_stream(conn, progress.job_id)
                if not records:
                    return
                at = self.clock()
                report = msgspec.to_builtins(progress)
                cause = f"progress:{progress.attempt}:{at.timestamp():.3f}"
                messages = self.intake.messages("progress", records, cause, at, progress=report)
                async with conn.transaction():
                    await store.add(conn, messages, None)
        except Exception:
            log.exception("webhooks: progress of %s", progress.job_id)
            return
        if messages:
            self._wake.set()

    async def _on_deliveries(self, msg: Msg) -> None:
        assert self._pool is not None
        request = msgspec.json.decode(msg.data, type=DeliveriesRequest)
        async with self._pool.acquire() as conn:
            found = await store.deliveries(conn, str(request.webhook_id), max(1, min(request.limit, 200)))
        await msg.respond(msgspec.json.encode(Deliveries(deliveries=found)))

    async def _on_replay(self, msg: Msg) -> None:
        assert self._pool is not None
        request = msgspec.json.decode(msg.data, type=ReplayRequest)
        async with self._pool.acquire() as conn:
            state = await store.replay(conn, str(request.webhook_id), request.message_id, self.clock())
        await msg.respond(msgspec.json.encode(ReplayAnswer(found=state is not None, state=state)))
        self._wake.set()
