"""Run one service until SIGINT/SIGTERM, with the lifecycle every service shares.

A service is anything with `async run()`, `async stop()` and `async readiness()`. `serve` runs it
with its side port (`base.sideport`) open for as long as the process lives, so an orchestrator
can tell a process that is starting or has lost a dependency from one that works.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

from base.config import Settings
from base.health import Readiness
from base.sideport import SidePort

log = logging.getLogger(__name__)

T = TypeVar("T")


class Service(Protocol):
    async def run(self) -> None:
        """Work until `stop()` (or a failure)."""

    async def stop(self) -> None:
        """Ask `run()` to finish: take no new work, finish what runs."""

    async def readiness(self) -> Readiness:
        """Whether it can do its work now, and if not, what it waits for (`/readyz`)."""


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


async def serve(service: Service, *, name: str, settings: Settings, grace_s: float = 30.0) -> None:
    """Run `service` with its side port (`settings.side_host`, `settings.side_port`); the first
    signal asks it to stop, a second or the grace period aborts it."""
    async with SidePort(name, service.readiness, host=settings.side_host, port=settings.side_port):
        await _run_until_signalled(service, name, grace_s)


async def _run_until_signalled(service: Service, name: str, grace_s: float) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(service.run(), name=name)
    stop_requested = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_requested.set)
    waiter = asyncio.create_task(stop_requested.wait(), name=f"{name}-signals")
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            await service.stop()
            try:
                await asyncio.wait_for(asyncio.shield(task), grace_s)
            except TimeoutError:
                log.error("%s did not stop within %.0fs; aborting", name, grace_s)
                task.cancel()
    finally:
        waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
