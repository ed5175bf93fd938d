"""Send a command to the scheduler and wait for its committed decision.

The command goes to the commands stream (durable, deduplicated by `Nats-Msg-Id`); the decision
comes back on this process's reply subject once the scheduler has committed it to PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from streams import subjects as s
from streams.messages import Decision, encode


class NoDecision(Exception):
    """The scheduler did not answer in time; the command may still be decided later."""


class CommandBus:
    def __init__(self, nc: NATS, instance: str | None = None) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._prefix = s.reply_inbox(instance or uuid.uuid4().hex[:12])
        self._waiting: dict[str, asyncio.Future[Decision]] = {}
        self._sub: Subscription | None = None
        self._decoder = msgspec.json.Decoder(Decision)

    async def start(self) -> CommandBus:
        self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)
        return self

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for future in self._waiting.values():
            future.cancel()

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject.rsplit(".", 1)[-1], None)
        if future is not None and not future.done():
            try:
                future.set_result(self._decoder.decode(msg.data))
            except msgspec.DecodeError as exc:
                future.set_exception(exc)

    async def send(self, subject: str, command: object, *, msg_id: str, timeout: float) -> Decision:
        """Publish durably, then wait up to `timeout` seconds for the decision."""
        token = uuid.uuid4().hex
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        try:
            await self._js.publish(
                subject,
                encode(command),
                timeout=timeout,
                headers={s.HDR_MSG_ID: msg_id, s.HDR_REPLY_TO: f"{self._prefix}.{token}"},
            )
            return await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise NoDecision(f"no decision on {subject} within {timeout:.1f}s") from exc
        finally:
            self._waiting.pop(token, None)
