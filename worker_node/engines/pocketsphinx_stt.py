"""Offline English speech-to-text with PocketSphinx; its wheel ships the acoustic and language
models, so nothing is downloaded.

The input is an uploaded WAV file (16-bit PCM, any rate, mono or stereo). It is mixed down to
mono and resampled to the model's 16 kHz with soxr. The transcript is the job's text artifact,
and its measured `audio_seconds` is what the job is charged. Reading, resampling and decoding run in
the engine's own process (`EngineProcess`), one job at a time: PocketSphinx holds the GIL while it
decodes, for seconds on long audio, which in the worker's process would stop its heartbeats. A
cancelled or timed-out job stops that process. PocketSphinx is a small, fast recogniser, not a
Whisper: expect the gist of clear speech, not every word.
"""

from __future__ import annotations

import io
import wave
from typing import Any

from worker_node.engines.base import EngineError, JobContext, JobInput, Output, read_input
from worker_node.engines.process import Emit, EngineProcess

MODEL_RATE = 16_000


def pcm16_mono_16k(data: bytes) -> tuple[bytes, float]:
    """16 kHz mono 16-bit PCM from a WAV file, and its length in seconds."""
    import numpy as np
    import soxr

    try:
        with wave.open(io.BytesIO(data)) as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise EngineError("UNSUPPORTED_INPUT", f"the input is not a WAV file this engine reads: {exc}") from exc
    if width != 2 or rate <= 0:
        raise EngineError("UNSUPPORTED_INPUT", f"the WAV must be 16-bit PCM (it has {8 * width}-bit samples)")
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float32)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    seconds = len(samples) / rate
    if rate != MODEL_RATE:
        samples = soxr.resample(samples, rate, MODEL_RATE)
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes(), seconds


class Transcriber:
    """The decoder, in the engine's process: built on its first job, kept for the next ones."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self.decoder = Decoder(loglevel="FATAL")

    def transcribe(self, wav: bytes, emit: Emit) -> tuple[str, float]:
        """The transcript of a WAV file and its length in seconds; the length is emitted first."""
        pcm, seconds = pcm16_mono_16k(wav)
        emit(seconds)
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()
        hypothesis = self.decoder.hyp()
        return (hypothesis.hypstr if hypothesis is not None else ""), seconds


class PocketSphinxEngine:
    name = "pocketsphinx"
    capabilities: tuple[str, ...] = ("stt",)
    models: tuple[str, ...] = ("pocketsphinx-en",)
    slots = 1

    def __init__(self) -> None:
        self.process = EngineProcess("pocketsphinx", Transcriber)

    async def run(self, job: JobInput, ctx: JobContext) -> list[Output]:
        data, content_type = await read_input(job, ctx)
        if "wav" not in content_type:
            raise EngineError("UNSUPPORTED_INPUT", f"PocketSphinx reads WAV files, not {content_type}")

        async def measured(seconds: Any) -> None:
            await ctx.progress(0.1, f"{seconds:.1f}s of audio", None)

        text, seconds = await self.process.call("transcribe", data, partial=measured)
        return [
            Output(
                kind="text",
                format="txt",
                content_type="text/plain; charset=utf-8",
                text=text,
                usage={"audio_seconds": round(seconds, 3)},
            )
        ]

    async def close(self) -> None:
        await self.process.close()
