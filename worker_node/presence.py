"""The worker's presence in the workers bucket: announced once it is ready, put again every
heartbeat, put at once when an engine's probe changes what it offers, deleted on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from streams import subjects as s
from streams.messages import WorkerStatus, encode
from worker_node import gpu
from worker_node.engines import Engine
from worker_node.engines.base import Probed

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0


class Presence:
    """Keeps the worker's status in the workers bucket, and knows which engines are down: those
    whose probe failed, whose models the status does not offer."""

    def __init__(
        self,
        *,
        worker_id: str,
        engines: list[Engine],
        interval_s: float,
        gpu_index: int | None,
        status: Callable[[], WorkerStatus],
    ) -> None:
        self.worker_id = worker_id
        self.engines = engines  # each engine once
        self.interval_s = interval_s
        self.gpu_index = gpu_index
        self.gpu_state: dict[str, Any] | None = None
        self.down: set[Engine] = set()  # engines whose probe failed: their models are not offered
        self._status = status
        self._kv: KeyValue | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def bucket(self, js: JetStreamContext) -> KeyValue:
        """The bucket the worker announces itself in. A worker does not create streams (its NATS
        user may not): it waits for the scheduler or `tessera migrate` to have made them."""
        while True:
            try:
                self._kv = await js.key_value(s.WORKERS_BUCKET)
                return self._kv
            except BucketNotFoundError:
                log.warning(
                    "worker %s: no %s bucket yet (the scheduler or `tessera migrate` creates it); waiting",
                    self.worker_id,
                    s.WORKERS_BUCKET,
                )
                await asyncio.sleep(1.0)

    async def start(self) -> None:
        """Probe the GPU and the engines (an engine that is down at start is not offered), announce
        the worker, and keep heartbeats and probes going until `stop`."""
        kv = self._kv
        assert kv is not None
        self.gpu_state = await gpu.probe_async(self.gpu_index)
        await self.probe_engines()
        await kv.put(self.worker_id, encode(self._status()))
        self._tasks = [
            asyncio.create_task(self._heartbeat(kv), name=f"worker-{self.worker_id}-heartbeat"),
            asyncio.create_task(self._watch_engines(), name=f"worker-{self.worker_id}-probes"),
        ]

    async def stop(self) -> None:
        """End heartbeats and probes, and say goodbye."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        assert self._kv is not None
        with contextlib.suppress(nats.errors.Error):
            await self._kv.delete(self.worker_id)  # goodbye

    async def _heartbeat(self, kv: KeyValue) -> None:
        has_gpu = self.gpu_state is not None
        while True:
            await asyncio.sleep(self.interval_s)
            if has_gpu:
                self.gpu_state = await gpu.probe_async(self.gpu_index) or self.gpu_state
            try:
                await kv.put(self.worker_id, encode(self._status()))
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("worker %s: heartbeat failed: %s", self.worker_id, exc)

    async def probe_engines(self) -> bool:
        """Ask every engine that can be probed whether its server answers; True when that changed
        what the worker offers."""
        probed = [e for e in self.engines if isinstance(e, Probed)]
        if not probed:
            return False
        results = await asyncio.gather(*(_probe(e) for e in probed))
        changed = False
        for engine, up in zip(probed, results, strict=True):
            if up and engine in self.down:
                log.info("worker %s: engine %s answers again; offering its models", self.worker_id, engine.name)
                self.down.discard(engine)
                changed = True
            elif not up and engine not in self.down:
                log.warning(
                    "worker %s: engine %s does not answer; withdrawing its models %s",
                    self.worker_id,
                    engine.name,
                    sorted(engine.models),
                )
                self.down.add(engine)
                changed = True
        return changed

    async def _watch_engines(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if await self.probe_engines():
                await self.announce()

    async def announce(self) -> None:
        """Put the worker's status now, out of the heartbeat's rhythm (an engine came or went)."""
        assert self._kv is not None
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self._kv.put(self.worker_id, encode(self._status()))


async def _probe(engine: Probed) -> bool:
    try:
        return await asyncio.wait_for(engine.probe(), PROBE_TIMEOUT_S)
    except Exception:  # a probe that cannot answer is a failed probe
        return False
