"""PocketSphinx decodes in its own process: the worker's loop stays live, and a stop is a real stop."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.speech_audio import speech_wav
from worker_node.engines.base import EngineError, JobContext, JobInput
from worker_node.engines.pocketsphinx_stt import PocketSphinxEngine

UPLOAD = {"object": "uploads/u/a", "content_type": "audio/wav"}


def stt_job() -> JobInput:
    return JobInput(job_id=uuid.uuid4(), attempt=1, capability="stt", model="pocketsphinx-en", params={"input": UPLOAD})


def context(wav: bytes, decoding: asyncio.Event | None = None) -> JobContext:
    """Fetches `wav`; sets `decoding` when the engine says how long the audio is, just before it decodes."""

    async def fetch(_name: str) -> bytes:
        return wav

    async def progress(_fraction: float | None, message: str | None, _partial: str | None) -> None:
        if decoding is not None and message and message.endswith("of audio"):
            decoding.set()

    return JobContext(progress, fetch)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def long_wav() -> bytes:
    return speech_wav(40)


@pytest.fixture(scope="module")
def short_wav() -> bytes:
    return speech_wav(3)


@pytest.fixture
async def engine() -> AsyncIterator[PocketSphinxEngine]:
    engine = PocketSphinxEngine()
    yield engine
    await engine.close()


async def decoding(engine: PocketSphinxEngine, wav: bytes) -> tuple[asyncio.Task[object], int]:
    """A transcription of `wav` under way in the engine's process, and that process's pid."""
    started = asyncio.Event()
    task = asyncio.create_task(engine.run(stt_job(), context(wav, started)))
    await asyncio.wait_for(started.wait(), 30)
    assert engine.process.pid is not None
    return task, engine.process.pid


@pytest.mark.timeout(120)
async def test_the_event_loop_stays_responsive_during_a_long_transcription(engine: PocketSphinxEngine) -> None:
    wav = speech_wav(20)  # about 6 s of decoding here, every moment of it holding the decoder's GIL
    lag = 0.0
    work = asyncio.create_task(engine.run(stt_job(), context(wav)))
    began = time.monotonic()
    while not work.done():
        before = time.monotonic()
        await asyncio.sleep(0.02)
        lag = max(lag, time.monotonic() - before - 0.02)
    [output] = await work
    assert time.monotonic() - began > 1.0  # it did decode for a while
    assert output.text and output.usage == {"audio_seconds": 20.0}
    assert lag < 0.5


async def test_a_cancelled_transcription_kills_its_process_and_the_next_job_runs(
    engine: PocketSphinxEngine, long_wav: bytes, short_wav: bytes
) -> None:
    task, pid = await decoding(engine, long_wav)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert not alive(pid)
    [output] = await engine.run(stt_job(), context(short_wav))
    assert output.text and engine.process.pid not in (None, pid)


async def test_a_timed_out_transcription_kills_its_process(
    engine: PocketSphinxEngine, long_wav: bytes, short_wav: bytes
) -> None:
    await engine.run(stt_job(), context(short_wav))
    pid = engine.process.pid
    assert pid is not None
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.5):
            await engine.run(stt_job(), context(long_wav))
    assert not alive(pid)
    [output] = await engine.run(stt_job(), context(short_wav))
    assert output.text


async def test_a_decoder_process_that_dies_fails_the_job_as_disconnected(
    engine: PocketSphinxEngine, long_wav: bytes, short_wav: bytes
) -> None:
    task, pid = await decoding(engine, long_wav)
    os.kill(pid, signal.SIGKILL)  # as the kernel's OOM killer would
    with pytest.raises(EngineError) as failure:
        await asyncio.wait_for(task, 5)
    assert failure.value.code == "ENGINE_DISCONNECTED"
    [output] = await engine.run(stt_job(), context(short_wav))
    assert output.text


async def test_input_errors_found_in_the_engines_process_keep_their_code(engine: PocketSphinxEngine) -> None:
    with pytest.raises(EngineError) as failure:
        await engine.run(stt_job(), context(b"RIFF but not really a wave file"))
    assert failure.value.code == "UNSUPPORTED_INPUT"
