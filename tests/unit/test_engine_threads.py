"""An engine's thread outlives a cancelled job, and keeps what it guards until it ends."""

from __future__ import annotations

import asyncio
import threading

import pytest

from worker_node.engines.base import run_exclusive


class Decoder:
    """Stands in for a C decoder that must never run two utterances at once."""

    def __init__(self) -> None:
        self.busy = threading.Lock()
        self.overlaps = 0
        self.finish = threading.Event()
        self.started = threading.Event()

    def transcribe(self, name: str) -> str:
        if not self.busy.acquire(blocking=False):
            self.overlaps += 1
            return name
        try:
            self.started.set()
            self.finish.wait(5)
            return name
        finally:
            self.busy.release()


async def test_a_cancelled_job_returns_at_once_and_the_next_waits_for_the_thread() -> None:
    lock, decoder = asyncio.Lock(), Decoder()
    first = asyncio.create_task(run_exclusive(lock, decoder.transcribe, "first"))
    await asyncio.to_thread(decoder.started.wait, 5)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(first, 1)  # the job is let go at once, with its thread still busy
    second = asyncio.create_task(run_exclusive(lock, decoder.transcribe, "second"))
    await asyncio.sleep(0.1)
    assert not second.done() and lock.locked()  # waits for the first thread, not beside it
    decoder.finish.set()
    assert await asyncio.wait_for(second, 5) == "second"
    assert decoder.overlaps == 0
    assert not lock.locked()


async def test_an_error_in_the_thread_reaches_the_job_and_frees_the_lock() -> None:
    lock = asyncio.Lock()

    def broken() -> None:
        raise RuntimeError("decoder failed")

    with pytest.raises(RuntimeError, match="decoder failed"):
        await run_exclusive(lock, broken)
    await asyncio.sleep(0)
    assert not lock.locked()
