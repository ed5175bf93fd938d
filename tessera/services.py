"""Run one service until SIGINT/SIGTERM, with the lifecycle every service shares."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Protocol

import nats

from streams import topology
from tessera.config import Settings

log = logging.getLogger(__name__)


class Service(Protocol):
    async def run(self) -> None: ...

    async def stop(self) -> None: ...


async def ensure_streams(nats_url: str, settings: Settings) -> None:
    nc = await nats.connect(nats_url)
    try:
        await topology.ensure(nc.jetstream(), artifact_ttl_s=settings.artifact_ttl_s)
    finally:
        await nc.close()


async def serve(service: Service, grace_s: float = 30.0) -> None:
    """Run `service`; the first signal asks it to stop, a second or the grace period aborts it."""
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(service.run(), name=type(service).__name__)
    stop_requested = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_requested.set)
    waiter = asyncio.create_task(stop_requested.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        await service.stop()
        try:
            await asyncio.wait_for(asyncio.shield(task), grace_s)
        except TimeoutError:
            log.error("%s did not stop within %.0fs; aborting", type(service).__name__, grace_s)
            task.cancel()
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
