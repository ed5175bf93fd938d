"""Speech over HTTP: Whisper-style speech-to-text and text-to-speech servers.

- Speech-to-text, `api="openai"`: `POST /v1/audio/transcriptions` (multipart `file`, `model`,
  `response_format=verbose_json`, whose `duration` is the audio's length); faster-whisper-server,
  LocalAI and OpenAI answer it. `api="whisper.cpp"`: whisper.cpp's server, `POST /inference`
  (multipart `file`, `response_format=json`).
- Text-to-speech, `api="openai"`: `POST /v1/audio/speech` with `{"model", "input", "voice",
  "response_format": "wav"}`. `api="piper"`: Piper's HTTP server, `POST /` with `{"text", "voice"}`,
  answered with a WAV.

Audio length comes from the server when it says so, else from the WAV header. It is the usage that
speech-to-text jobs are charged by.
"""

from __future__ import annotations

import io
import wave
from typing import Any

import httpx

from worker_node.engines.base import EngineError, JobContext, JobInput, Output, read_input
from worker_node.engines.http import answers, server_error, transport_errors


def wav_seconds(data: bytes) -> float | None:
    try:
        with wave.open(io.BytesIO(data)) as wav:
            seconds: float = wav.getnframes() / wav.getframerate()
            return seconds
    except (wave.Error, EOFError, ZeroDivisionError):
        return None


class _HttpSpeech:
    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        models: dict[str, str],
        api: str,
        apis: tuple[str, ...],
        slots: int,
        timeout_s: float,
        api_key: str | None,
    ) -> None:
        if api not in apis:
            raise ValueError(f"{name}: api must be one of {', '.join(apis)}")
        self.name = name
        self.api = api
        self.base_url = base_url.rstrip("/")
        self.model_map = dict(models)
        self.models = tuple(models)
        self.slots = slots
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout_s, connect=10.0)
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def probe(self) -> bool:
        """Whether the server answers at all (these servers share no health route)."""
        return await answers(self._client, "/")

    async def _post(self, server: str, path: str, **kwargs: Any) -> httpx.Response:
        with transport_errors(server, self.base_url):
            response = await self._client.post(path, **kwargs)
        if response.status_code != 200:
            raise await server_error(response, server)
        return response


class WhisperEngine(_HttpSpeech):
    capabilities: tuple[str, ...] = ("stt",)

    def __init__(
        self,
        base_url: str,
        models: dict[str, str],
        *,
        api: str = "openai",
        slots: int = 2,
        timeout_s: float = 600.0,
        api_key: str | None = None,
    ) -> None:
        super().__init__(
            name="whisper",
            base_url=base_url,
            models=models,
            api=api,
            apis=("openai", "whisper.cpp"),
            slots=slots,
            timeout_s=timeout_s,
            api_key=api_key,
        )

    async def run(self, job: JobInput, ctx: JobContext) -> list[Output]:
        data, content_type = await read_input(job, ctx)
        form: dict[str, str] = {"response_format": "verbose_json" if self.api == "openai" else "json"}
        if self.api == "openai":
            form["model"] = self.model_map[job.model]
        for name in ("language", "prompt"):
            if isinstance(job.params.get(name), str) and job.params[name]:
                form[name] = job.params[name]
        path = "/v1/audio/transcriptions" if self.api == "openai" else "/inference"
        await ctx.progress(None, "transcribing", None)
        response = await self._post(
            "the speech-to-text server", path, data=form, files={"file": ("input", data, content_type)}
        )
        try:
            body = response.json()
            text = str(body["text"]).strip()
        except (ValueError, KeyError, TypeError) as exc:
            raise EngineError("ENGINE_ERROR", f"the speech-to-text server answered without text: {exc!r}") from exc
        seconds = body.get("duration") if isinstance(body.get("duration"), int | float) else wav_seconds(data)
        usage = {"audio_seconds": round(float(seconds), 3)} if seconds is not None else {}
        return [Output(kind="text", format="txt", content_type="text/plain; charset=utf-8", text=text, usage=usage)]


class SpeechEngine(_HttpSpeech):
    capabilities: tuple[str, ...] = ("tts",)

    def __init__(
        self,
        base_url: str,
        models: dict[str, str],
        *,
        api: str = "openai",
        slots: int = 2,
        timeout_s: float = 300.0,
        api_key: str | None = None,
        default_voice: str | None = None,
    ) -> None:
        super().__init__(
            name="tts-http",
            base_url=base_url,
            models=models,
            api=api,
            apis=("openai", "piper"),
            slots=slots,
            timeout_s=timeout_s,
            api_key=api_key,
        )
        self.default_voice = default_voice

    async def run(self, job: JobInput, ctx: JobContext) -> list[Output]:
        text = str(job.params.get("prompt", ""))
        voice = job.params.get("voice") or self.default_voice
        if self.api == "openai":
            body: dict[str, Any] = {
                "model": self.model_map[job.model],
                "input": text,
                "voice": voice or "alloy",
                "response_format": "wav",
            }
            if isinstance(job.params.get("speed"), int | float):
                body["speed"] = job.params["speed"]
            response = await self._post("the text-to-speech server", "/v1/audio/speech", json=body)
        else:
            body = {"text": text, **({"voice": voice} if voice else {})}
            response = await self._post("Piper", "/", json=body)
        audio = response.content
        seconds = wav_seconds(audio)
        if seconds is None:
            raise EngineError("ENGINE_ERROR", "the text-to-speech server did not answer with a WAV file")
        return [
            Output(kind="audio", format="wav", content_type="audio/wav", data=audio, duration_seconds=round(seconds, 3))
        ]
