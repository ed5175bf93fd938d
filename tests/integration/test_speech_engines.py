"""The Whisper-style speech-to-text and the text-to-speech HTTP adapters against fake servers."""

from __future__ import annotations

import uuid

import pytest

from tessera.embedded import free_port
from tests.fake_llm_servers import serve
from tests.fake_speech_servers import SpeechState, silent_wav, speech_app
from worker_node.engines.base import EngineError, JobContext, JobInput
from worker_node.engines.speech_http import SpeechEngine, WhisperEngine


async def no_progress(*_args: object) -> None:
    return None


def stt_job(model: str = "whisper-large", **params: object) -> JobInput:
    return JobInput(
        job_id=uuid.uuid4(),
        attempt=1,
        capability="stt",
        model=model,
        params={"input": {"object": "uploads/u/1", "content_type": "audio/wav"}, **params},
    )


def context(data: bytes) -> JobContext:
    async def fetch(name: str) -> bytes:
        assert name == "uploads/u/1"
        return data

    return JobContext(progress=no_progress, fetch=fetch)


@pytest.mark.parametrize("api", ["openai", "whisper.cpp"])
async def test_transcription_and_the_audio_length_it_is_charged_by(api: str) -> None:
    state = SpeechState()
    async with serve(speech_app(state)) as url:
        engine = WhisperEngine(url, {"whisper-large": "large-v3"}, api=api)
        try:
            [output] = await engine.run(stt_job(language="en"), context(silent_wav(2.5)))
        finally:
            await engine.close()
    assert output.text == "audio of 2.5 seconds" and output.usage == {"audio_seconds": 2.5}
    sent = state.requests[0]
    assert sent["language"] == "en"
    assert sent.get("model") == ("large-v3" if api == "openai" else None)


async def test_speech_to_text_errors_and_missing_input() -> None:
    async with serve(speech_app(SpeechState())) as url:
        engine = WhisperEngine(url, {"whisper-large": "large-v3"})
        try:
            with pytest.raises(EngineError) as bad:
                await engine.run(stt_job(), context(b"not audio"))
            with pytest.raises(EngineError) as missing:
                await engine.run(
                    JobInput(job_id=uuid.uuid4(), attempt=1, capability="stt", model="whisper-large", params={}),
                    context(b""),
                )
        finally:
            await engine.close()
    assert bad.value.code == "ENGINE_REJECTED" and "Invalid file format" in bad.value.message
    assert missing.value.code == "INPUT_REQUIRED"
    down = WhisperEngine(f"http://127.0.0.1:{free_port(None)}", {"whisper-large": "x"})
    with pytest.raises(EngineError) as unreachable:
        await down.run(stt_job(), context(silent_wav(1)))
    await down.close()
    assert unreachable.value.code == "ENGINE_UNAVAILABLE"


@pytest.mark.parametrize(("api", "seconds"), [("openai", 1.1), ("piper", 0.55)])
async def test_text_to_speech_returns_a_wav_with_its_length(api: str, seconds: float) -> None:
    state = SpeechState()
    async with serve(speech_app(state)) as url:
        engine = SpeechEngine(url, {"voice-http": "tts-1"}, api=api, default_voice="amy")
        try:
            [output] = await engine.run(
                JobInput(
                    job_id=uuid.uuid4(),
                    attempt=1,
                    capability="tts",
                    model="voice-http",
                    params={"prompt": "hello world"},
                ),
                JobContext(no_progress),
            )
        finally:
            await engine.close()
    assert output.content_type == "audio/wav" and output.duration_seconds == seconds
    assert state.requests[0] == (
        {"model": "tts-1", "input": "hello world", "voice": "amy", "response_format": "wav"}
        if api == "openai"
        else {"text": "hello world", "voice": "amy"}
    )


async def test_text_to_speech_server_errors_say_why() -> None:
    async with serve(speech_app(SpeechState())) as url:
        engine = SpeechEngine(url, {"voice-http": "tts-1"})
        try:
            with pytest.raises(EngineError) as error:
                await engine.run(
                    JobInput(
                        job_id=uuid.uuid4(),
                        attempt=1,
                        capability="tts",
                        model="voice-http",
                        params={"prompt": "x", "voice": "nobody"},
                    ),
                    JobContext(no_progress),
                )
        finally:
            await engine.close()
    assert error.value.code == "ENGINE_REJECTED" and "voice 'nobody' not found" in error.value.message


async def test_a_dropped_connection_is_engine_disconnected() -> None:
    async with serve(speech_app(SpeechState())) as url:
        engine = SpeechEngine(url, {"voice-http": "piper"}, api="piper")
        try:
            with pytest.raises(EngineError) as error:
                await engine.run(
                    JobInput(
                        job_id=uuid.uuid4(), attempt=1, capability="tts", model="voice-http", params={"prompt": "drop"}
                    ),
                    JobContext(no_progress),
                )
        finally:
            await engine.close()
    assert error.value.code == "ENGINE_DISCONNECTED"
