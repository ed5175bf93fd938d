"""The adapters against real servers, when their URLs are set (skipped otherwise):

    COMFYUI_URL=http://127.0.0.1:8188 KOBOLD_URL=http://127.0.0.1:5001 OPENAI_URL=http://127.0.0.1:8080 \\
    OPENAI_MODEL=gemma-3-270m-it WHISPER_URL=http://127.0.0.1:8000 WHISPER_MODEL=large-v3 \\
    TTS_URL=http://127.0.0.1:5000 TTS_API=piper .venv/bin/python -m pytest tests/integration/test_real_engines.py
"""

from __future__ import annotations

import os
import uuid

import pytest

from tests.fake_speech_servers import silent_wav
from worker_node.engines.base import JobContext, JobInput


def needs(variable: str) -> str:
    value = os.environ.get(variable)
    if not value:
        pytest.skip(f"{variable} is not set")
    return value


async def no_progress(*_args: object) -> None:
    return None


def job(capability: str, model: str, **params: object) -> JobInput:
    return JobInput(job_id=uuid.uuid4(), attempt=1, capability=capability, model=model, params=params)


async def test_real_comfyui_renders_an_image() -> None:
    from worker_node.engines.comfyui import ComfyUIEngine

    engine = ComfyUIEngine(needs("COMFYUI_URL"))
    try:
        model = next(
            m for m, checkpoint in engine.checkpoints.items() if checkpoint in await engine.checkpoints_available()
        )
        [image] = await engine.run(
            job("image", model, prompt="a red cube", width=512, height=512, steps=4), JobContext(no_progress)
        )
    finally:
        await engine.close()
    assert image.content_type == "image/png" and (image.width, image.height) == (512, 512)


async def test_real_kobold_generates() -> None:
    from worker_node.engines.llm_http import KoboldEngine

    engine = KoboldEngine(needs("KOBOLD_URL"), {"text": "any"})
    try:
        [output] = await engine.run(
            job("text", "text", prompt="Once upon a time", max_tokens=16), JobContext(no_progress)
        )
    finally:
        await engine.close()
    assert output.text and 0 < output.usage["output_tokens"] <= 16


async def test_real_openai_compatible_server_generates() -> None:
    from worker_node.engines.llm_http import OpenAIChatEngine

    engine = OpenAIChatEngine(
        needs("OPENAI_URL"), {"text": needs("OPENAI_MODEL")}, api_key=os.environ.get("OPENAI_API_KEY")
    )
    try:
        [output] = await engine.run(job("text", "text", prompt="Say hello.", max_tokens=16), JobContext(no_progress))
    finally:
        await engine.close()
    # A base (not instruction-tuned) model may answer a chat with nothing at all; the protocol held.
    assert output.text is not None and 0 <= output.usage["output_tokens"] <= 16


async def test_real_whisper_transcribes() -> None:
    from worker_node.engines.speech_http import WhisperEngine

    engine = WhisperEngine(
        needs("WHISPER_URL"),
        {"stt": os.environ.get("WHISPER_MODEL", "whisper-1")},
        api=os.environ.get("WHISPER_API", "openai"),
    )

    async def fetch(_name: str) -> bytes:
        return silent_wav(1.0)

    try:
        [output] = await engine.run(
            job("stt", "stt", input={"object": "uploads/x/y", "content_type": "audio/wav"}),
            JobContext(no_progress, fetch),
        )
    finally:
        await engine.close()
    assert output.text is not None and output.usage["audio_seconds"] == pytest.approx(1.0, abs=0.1)


async def test_real_tts_speaks() -> None:
    from worker_node.engines.speech_http import SpeechEngine

    engine = SpeechEngine(
        needs("TTS_URL"), {"tts": os.environ.get("TTS_MODEL", "tts-1")}, api=os.environ.get("TTS_API", "openai")
    )
    try:
        [audio] = await engine.run(job("tts", "tts", prompt="Hello from Tessera."), JobContext(no_progress))
    finally:
        await engine.close()
    assert audio.content_type == "audio/wav" and audio.duration_seconds and audio.duration_seconds > 0.3
