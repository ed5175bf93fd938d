"""Following the workers bucket: every worker's announcement and heartbeat, and its goodbye.

The scheduler and the gateway both follow it. A KV watcher is a consumer on the nats-server; it
does not outlive a restart of that server, so the feed starts a new watcher whenever the
connection comes back (`reconnected`), or when its watcher fails or has been silent for longer than
any worker may be. A new watcher first replays every worker's newest status, so nothing said
while the feed was away is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from streams import subjects as s
from streams.messages import WorkerStatus

log = logging.getLogger(__name__)


class Watcher(Protocol):
    """What the feed uses of nats-py's `KeyValue.KeyWatcher`, whose methods carry no types."""

    async def updates(self, timeout: float = 5.0) -> KeyValue.Entry | None: ...

    async def stop(self) -> None: ...


class WorkersFeed:
    """Calls `on_status` for each status a worker puts, `on_gone` for a goodbye, and `on_known`
    each time a new watcher has replayed the bucket's current contents."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        on_status: Callable[[WorkerStatus], None],
        on_gone: Callable[[str], None],
        on_known: Callable[[], None] = lambda: None,
        silent_restart_s: float = 30.0,
    ) -> None:
        self._js = js
        self._on_status = on_status
        self._on_gone = on_gone
        self._on_known = on_known
        self._silent_restart_s = silent_restart_s
        self._restart = asyncio.Event()
        self.watchers_started = 0

    def reconnected(self) -> None:
        """The NATS connection came back: the current watcher may be dead; start a new one."""
        self._restart.set()

    async def run(self) -> None:
        decoder = msgspec.json.Decoder(WorkerStatus)
        while True:
            self._restart.clear()
            try:
                kv = await self._js.key_value(s.WORKERS_BUCKET)
                watcher: Watcher = await kv.watchall()
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("cannot watch the workers bucket (%s); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            self.watchers_started += 1
            try:
                await self._follow(watcher, decoder)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("the workers bucket watcher failed (%s); starting another", exc)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(watcher.stop(), 2)

    async def _follow(self, watcher: Watcher, decoder: msgspec.json.Decoder[WorkerStatus]) -> None:
        silent = 0.0
        while not self._restart.is_set():
            try:
                entry = await watcher.updates(timeout=1.0)
            except TimeoutError:
                silent += 1.0
                if silent >= self._silent_restart_s:
                    return  # workers heartbeat far more often than this: the watcher is likely dead
                continue
            silent = 0.0
            if entry is None:  # the end of the bucket's contents when the watcher started
                self._on_known()
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self._on_gone(entry.key)
                continue
            try:
                status = decoder.decode(entry.value)
            except msgspec.DecodeError as exc:
                log.warning("ignoring malformed status of worker %s: %s", entry.key, exc)
                continue
            self._on_status(status)
