"""A bot's completion feed: every terminal notification for its jobs, delivered at least once.

The scheduler publishes a `Notification` to `tessera.done.<frontend>.<bot>.<job>` in the
`TESSERA_NOTIFY` stream when a job reaches its terminal state. The message id is `done:<job>`, so
there is one per job. A bot consumes its own subjects with a durable consumer, so notifications
that arrive while it is down wait for it. It acknowledges each one only after its handler has
replied to the user. While a handler runs (an upload of 50 MB can outlast `ack_wait`) the feed
tells JetStream every third of `ack_wait` that the notification, and each one fetched with it and
still waiting its turn, is in progress, so a slow delivery is not handed out again meanwhile. A
handler that fails gets the notification again after a second, so handlers must tolerate a repeat
(a bot killed between the platform taking the reply and NATS taking the acknowledgement repeats
it too). A handler that raises `Undeliverable` (the user blocked the bot, the chat is gone) has it
logged and acknowledged: it is never retried. The notification's `reply_context` is what the bot
attached at submit (chat id, message id).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from base.errors import TesseraError
from base.health import Readiness
from bots import metrics
from streams import connection, permissions
from streams import subjects as s
from streams.messages import Notification

log = logging.getLogger(__name__)

Handler = Callable[[Notification], Awaitable[None]]


class Undeliverable(TesseraError):
    """The result can never reach its user (they blocked the bot, the chat was deleted, the bot was
    removed from it): raised by a handler so the notification is recorded and acknowledged, not
    retried forever."""


class CompletionFeed:
    def __init__(self, nats_url: str, frontend: str, bot_id: str | None, *, ack_wait_s: float = 30.0) -> None:
        self.nats_url = nats_url
        self.subject = s.done_for(frontend, bot_id)
        self.durable = permissions.bot_user(frontend, bot_id)  # also its NATS user's name
        self.ack_wait_s = ack_wait_s
        self._stopping = asyncio.Event()
        self._nc: NATS | None = None
        self._following = False
        self.undeliverable = 0  # notifications acknowledged without reaching their user
        self.frontend = frontend

    async def stop(self) -> None:
        self._stopping.set()

    async def run(self, handler: Handler) -> None:
        """Call `handler` for each notification until `stop()`; acknowledge those it handled."""
        async with connection.opened(self.nats_url, self.durable) as nc:
            self._nc = nc
            await self._consume(nc, handler)

    @property
    def following(self) -> bool:
        """Whether it consumes its notifications now."""
        return self._following

    async def readiness(self) -> Readiness:
        """Ready while it hears NATS and follows its notifications."""
        nc = self._nc
        return Readiness(checks={"nats": nc is not None and nc.is_connected, "following": self._following})

    async def _consume(self, nc: NATS, handler: Handler) -> None:
        decoder = msgspec.json.Decoder(Notification)
        try:
            sub = await nc.jetstream().pull_subscribe(
                self.subject,
                durable=self.durable,
                stream=s.NOTIFY_STREAM,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=self.ack_wait_s,
                    deliver_policy=DeliverPolicy.ALL,
                    description=f"completions for {self.durable}",
                ),
            )
            self._following = True
            while not self._stopping.is_set():
                try:
                    msgs = await sub.fetch(32, timeout=0.5)
                except TimeoutError:
                    continue
                except nats.errors.Error as exc:  # NATS is away; the notifications wait in their stream
                    log.warning("%s: cannot fetch notifications (%r); retrying", self.durable, exc)
                    await asyncio.sleep(0.5)
                    continue
                await self._handle_batch(msgs, decoder, handler)
        finally:
            self._following = False

    async def _handle_batch(
        self, msgs: list[Msg], decoder: msgspec.json.Decoder[Notification], handler: Handler
    ) -> None:
        """Handle a fetched batch in order, keeping the messages not yet answered in progress."""
        waiting = list(msgs)
        keeper = asyncio.create_task(self._keep_in_progress(waiting), name=f"in-progress-{self.durable}")
        try:
            for msg in msgs:
                await self._handle(msg, decoder, handler)
                waiting.remove(msg)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    async def _keep_in_progress(self, waiting: list[Msg]) -> None:
        """Tell JetStream every third of `ack_wait` that these messages are being worked on."""
        while True:
            await asyncio.sleep(self.ack_wait_s / 3)
            for msg in list(waiting):
                try:
                    await msg.in_progress()
                except nats.errors.Error as exc:  # NATS away: it may come again, handlers tolerate that
                    log.warning("%s: cannot mark a notification in progress (%r)", self.durable, exc)

    async def _handle(self, msg: Msg, decoder: msgspec.json.Decoder[Notification], handler: Handler) -> None:
        try:
            notification = decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            log.error("%s: dropping an undecodable notification on %s: %s", self.durable, msg.subject, exc)
            await msg.term()
            return
        try:
            await handler(notification)
        except Undeliverable as exc:  # never will be: record it, do not retry
            log.warning(
                "%s: job %s's result is undeliverable (%s); acknowledged without a reply",
                self.durable,
                notification.job_id,
                exc,
            )
            self.undeliverable += 1
            metrics.DELIVERIES(self.frontend, "undeliverable").inc()
            await msg.ack()
            return
        except Exception:  # the user was not told: let NATS deliver it again
            log.exception("%s: handling job %s failed; it will come again", self.durable, notification.job_id)
            metrics.DELIVERIES(self.frontend, "retried").inc()
            await msg.nak(delay=1.0)
            return
        metrics.DELIVERIES(self.frontend, "delivered").inc()
        await msg.ack()
