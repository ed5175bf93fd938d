"""Run one service until SIGINT/SIGTERM, with the lifecycle every service shares."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

from streams import connection, topology
from base.config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


class Service(Protocol):
    async def run(self) -> None: ...

    async def stop(self) -> None: ...


async def ensure_streams(nats_url: str, settings: Settings) -> None:
    nc = await connection.connect_once(nats_url, "ensure-streams")
    try:
        await topology.ensure(nc.jetstream(), artifact_ttl_s=settings.artifact_ttl_s)
    finally:
        await nc.close()


def tune_gc() -> None:
    """The services allocate many short-lived objects per message and hold few cycles: collect the
    young generation less often, and leave what was loaded at start out of every collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run`, on uvloop where it is installed (it comes with uvicorn[standard]).

    The services spend most of their time in socket I/O and callbacks; uvloop roughly halves that
    cost, which matters when every component shares two cores (docs/performance.md).
    """
    tune_gc()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


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
