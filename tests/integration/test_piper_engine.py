"""Piper speaks with the voice from its wheel, in its own process: a real WAV of a plausible length,
`speed` in words per minute, bad params refused, a cancel that stops the process, and speech that
PocketSphinx understands."""

from __future__ import annotations

import asyncio
import io
import os
import uuid
import wave
from collections.abc import AsyncIterator
from typing import Any

import pytest

from worker_node.engines.base import EngineError, JobContext, JobInput
from worker_node.engines.piper import PiperEngine
from worker_node.engines.pocketsphinx_stt import PocketSphinxEngine

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."  # 13 words


async def no_progress(_fraction: float | None, _message: str | None, _partial: str | None) -> None:
    return None


def tts_job(**params: Any) -> JobInput:
    return JobInput(job_id=uuid.uuid4(), attempt=1, capability="tts", model="piper-joe", params=params)


@pytest.fixture
async def engine() -> AsyncIterator[PiperEngine]:
    engine = PiperEngine()
    yield engine
    await engine.close()


def facts(data: bytes) -> tuple[int, int, int, float]:
    with wave.open(io.BytesIO(data)) as wav:
        return wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getnframes() / wav.getframerate()


async def test_a_sentence_is_a_wav_of_plausible_length(engine: PiperEngine) -> None:
    [audio] = await engine.run(tts_job(prompt=SENTENCE), JobContext(no_progress))
    assert audio.kind == "audio" and audio.format == "wav" and audio.content_type == "audio/wav"
    assert audio.data is not None
    channels, width, rate, seconds = facts(audio.data)
    assert (channels, width, rate) == (1, 2, 22050)
    # 13 words at about 175 words a minute is about 4.5 s; a broken synthesis is silence or noise of
    # another length.
    assert 2.5 < seconds < 8.0, seconds
    assert audio.duration_seconds == pytest.approx(seconds, abs=0.01)
    faster = (await engine.run(tts_job(prompt=SENTENCE, speed=350), JobContext(no_progress)))[0]
    assert faster.data is not None
    assert facts(faster.data)[3] < 0.7 * seconds


@pytest.mark.parametrize(
    "params",
    [{"prompt": "  "}, {"prompt": "x", "speed": 5}, {"prompt": "x", "speed": "fast"}, {"prompt": "x", "speed": True}],
)
async def test_bad_params_are_refused(engine: PiperEngine, params: dict[str, Any]) -> None:
    with pytest.raises(EngineError) as refused:
        await engine.run(tts_job(**params), JobContext(no_progress))
    assert refused.value.code == "INVALID_PARAMS"


async def test_a_cancel_stops_the_synthesis_process(engine: PiperEngine) -> None:
    await engine.run(tts_job(prompt="Warm up."), JobContext(no_progress))  # the voice is loaded
    pid = engine.process.pid
    assert pid is not None
    task = asyncio.create_task(engine.run(tts_job(prompt=" ".join([SENTENCE] * 40)), JobContext(no_progress)))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the synthesis process outlived the cancel")
    [audio] = await engine.run(tts_job(prompt="Again."), JobContext(no_progress))  # a fresh process
    assert audio.data is not None and engine.process.pid not in (None, pid)


async def test_pocketsphinx_understands_piper(engine: PiperEngine) -> None:
    [audio] = await engine.run(tts_job(prompt=SENTENCE), JobContext(no_progress))
    assert audio.data is not None
    wav = audio.data

    async def fetch(_name: str) -> bytes:
        return wav

    stt = PocketSphinxEngine()
    try:
        job = JobInput(
            job_id=uuid.uuid4(),
            attempt=1,
            capability="stt",
            model="pocketsphinx-en",
            params={"input": {"object": "uploads/u/a", "content_type": "audio/wav"}},
        )
        [text] = await stt.run(job, JobContext(no_progress, fetch))
    finally:
        await stt.close()
    assert text.text is not None
    heard = set(text.text.split()) & {"quick", "brown", "fox", "jumps", "lazy", "dog", "river", "bank"}
    assert len(heard) >= 4, text.text
