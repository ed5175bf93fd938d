"""The gateway's view of the workers online, kept current from the workers bucket."""

from __future__ import annotations

import asyncio
import contextlib
import time

from nats.js import JetStreamContext

from streams.messages import WorkerStatus
from streams.workers_feed import WorkersFeed


class Fleet:
    def __init__(self, stale_after_s: float = 10.0) -> None:
        self.stale_after_s = stale_after_s
        self._workers: dict[str, tuple[WorkerStatus, float]] = {}
        self._task: asyncio.Task[None] | None = None
        self._feed: WorkersFeed | None = None

    def online(self) -> list[WorkerStatus]:
        now = time.monotonic()
        return [w for w, seen in self._workers.values() if now - seen <= self.stale_after_s and not w.draining]

    def slots_for(self, model: str) -> int:
        return sum(w.slots_for(model) for w in self.online())

    async def start(self, js: JetStreamContext) -> None:
        self._feed = WorkersFeed(js, on_status=self._seen, on_gone=self._gone)
        self._task = asyncio.create_task(self._feed.run(), name="gateway-fleet")

    def _gone(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    def reconnected(self) -> None:
        """Back on NATS: workers were silent only to us; follow the bucket anew."""
        now = time.monotonic()
        self._workers = {key: (status, now) for key, (status, _) in self._workers.items()}
        if self._feed is not None:
            self._feed.reconnected()

    def _seen(self, status: WorkerStatus) -> None:
        self._workers[status.worker_id] = (status, time.monotonic())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
