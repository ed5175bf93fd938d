"""The gateway's view of the workers online, kept current from the workers bucket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import msgspec
from nats.js import JetStreamContext

from streams import subjects as s
from streams.messages import WorkerStatus

log = logging.getLogger(__name__)


class Fleet:
    def __init__(self, stale_after_s: float = 10.0) -> None:
        self.stale_after_s = stale_after_s
        self._workers: dict[str, tuple[WorkerStatus, float]] = {}
        self._task: asyncio.Task[None] | None = None

    def online(self) -> list[WorkerStatus]:
        now = time.monotonic()
        return [w for w, seen in self._workers.values() if now - seen <= self.stale_after_s and not w.draining]

    def slots_for(self, model: str) -> int:
        return sum(w.slots_for(model) for w in self.online())

    async def start(self, js: JetStreamContext) -> None:
        kv = await js.key_value(s.WORKERS_BUCKET)
        watcher = await kv.watchall()
        self._task = asyncio.create_task(self._follow(watcher), name="gateway-fleet")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, watcher) -> None:  # type: ignore[no-untyped-def]
        decoder = msgspec.json.Decoder(WorkerStatus)
        while True:
            try:
                entry = await watcher.updates(timeout=5)
            except TimeoutError:
                continue
            if entry is None:
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self._workers.pop(entry.key, None)
                continue
            try:
                self._workers[entry.key] = (decoder.decode(entry.value), time.monotonic())
            except msgspec.DecodeError:
                log.warning("ignoring malformed status of worker %s", entry.key)
