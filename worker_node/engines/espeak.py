"""Offline text-to-speech with eSpeak NG, loaded from the `espeakng-loader` wheel (WAV out).

libespeak-ng keeps global state, so one synthesis runs at a time, in a thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import io
import threading
import wave

from worker_node.engines.base import EngineError, JobContext, JobInput, Output

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE = 1
_ESPEAK_CHARS_UTF8 = 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Espeak:
    """The process-wide libespeak-ng instance."""

    _instance: _Espeak | None = None
    _guard = threading.Lock()

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0
        )
        if self.rate <= 0:
            raise EngineError("ENGINE_UNAVAILABLE", "eSpeak NG failed to initialise")
        self._chunks: list[bytes] = []
        self._callback = _CALLBACK(self._on_samples)  # keep a reference: C holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lock = threading.Lock()

    @classmethod
    def get(cls) -> _Espeak:
        with cls._guard:
            if cls._instance is None:
                cls._instance = _Espeak()
            return cls._instance

    def _on_samples(self, wav: ctypes._Pointer[ctypes.c_short], count: int, _events: int) -> int:
        if bool(wav) and count > 0:  # a NULL pointer is false
            self._chunks.append(ctypes.string_at(wav, count * 2))
        return 0

    def synthesize(self, text: str, voice: str, words_per_minute: int) -> bytes:
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise EngineError("INVALID_PARAMS", f"unknown voice {voice!r}")
            self.lib.espeak_SetParameter(_ESPEAK_RATE, words_per_minute, 0)
            self._chunks = []
            encoded = text.encode()
            status = self.lib.espeak_Synth(
                ctypes.c_char_p(encoded), ctypes.c_size_t(len(encoded) + 1), 0, 0, 0, _ESPEAK_CHARS_UTF8, None, None
            )
            self.lib.espeak_Synchronize()
            if status != 0:
                raise EngineError("ENGINE_ERROR", f"eSpeak NG synthesis failed with status {status}")
            return b"".join(self._chunks)


class EspeakEngine:
    name = "espeak"
    capabilities: tuple[str, ...] = ("tts",)
    models: tuple[str, ...] = ("espeak-ng",)
    slots = 1

    async def run(self, job: JobInput, ctx: JobContext) -> list[Output]:
        text = str(job.params.get("prompt", "")).strip()
        if not text:
            raise EngineError("INVALID_PARAMS", "text-to-speech needs a non-empty prompt")
        voice = str(job.params.get("voice", "en-us"))
        speed = job.params.get("speed", 175)
        if not isinstance(speed, int) or not 80 <= speed <= 450:
            raise EngineError("INVALID_PARAMS", "speed must be an integer between 80 and 450 words per minute")
        espeak = await asyncio.to_thread(_Espeak.get)
        pcm = await asyncio.to_thread(espeak.synthesize, text, voice, speed)
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(espeak.rate)
            wav.writeframes(pcm)
        duration = len(pcm) / 2 / espeak.rate
        return [
            Output(
                kind="audio",
                format="wav",
                content_type="audio/wav",
                data=buffer.getvalue(),
                duration_seconds=round(duration, 3),
            )
        ]

    async def close(self) -> None:
        return None
