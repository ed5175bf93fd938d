"""Fake speech servers speaking the real protocols, for the speech adapters' tests.

- OpenAI-compatible `POST /v1/audio/transcriptions` (multipart `file`, `model`, `response_format`;
  `verbose_json` answers `{"task", "language", "duration", "text", "segments"}`) and
  `POST /v1/audio/speech` (JSON, answers audio bytes).
- whisper.cpp's `POST /inference` (multipart `file`, answers `{"text"}`).
- Piper's `POST /` (JSON `{"text", "voice"}`, answers a WAV).

The "transcript" is the WAV's length, so a test can tell which audio was sent. Errors use each
server's shape: OpenAI's `{"error": {"message", "type"}}`, and whisper.cpp's `{"error": "..."}`.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse


def silent_wav(seconds: float, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\x00\x00" * int(seconds * rate))
    return buffer.getvalue()


def _seconds(data: bytes) -> float | None:
    try:
        with wave.open(io.BytesIO(data)) as wav:
            return wav.getnframes() / wav.getframerate()
    except wave.Error:
        return None


@dataclass
class SpeechState:
    requests: list[dict[str, Any]] = field(default_factory=list)


def speech_app(state: SpeechState) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> JSONResponse:
        async with request.form() as form:
            data = await form["file"].read()  # type: ignore[union-attr]
            fields = {k: v for k, v in form.items() if k != "file"}
        state.requests.append(fields)
        seconds = _seconds(data)
        if seconds is None:
            return JSONResponse(
                {
                    "error": {
                        "message": "Invalid file format.",
                        "type": "invalid_request_error",
                        "param": "file",
                        "code": None,
                    }
                },
                status_code=400,
            )
        text = f"audio of {seconds:g} seconds"
        if fields.get("response_format") == "verbose_json":
            return JSONResponse(
                {
                    "task": "transcribe",
                    "language": "english",
                    "duration": seconds,
                    "text": text,
                    "segments": [{"id": 0, "start": 0.0, "end": seconds, "text": text}],
                }
            )
        return JSONResponse({"text": text})

    @app.post("/inference")
    async def inference(request: Request) -> JSONResponse:
        async with request.form() as form:
            data = await form["file"].read()  # type: ignore[union-attr]
            state.requests.append({k: v for k, v in form.items() if k != "file"})
        seconds = _seconds(data)
        if seconds is None:
            return JSONResponse({"error": "failed to read WAV file"}, status_code=400)
        return JSONResponse({"text": f" audio of {seconds:g} seconds\n"})

    @app.post("/v1/audio/speech")
    async def speech(request: Request) -> Response:
        body = await request.json()
        state.requests.append(body)
        if body.get("voice") == "nobody":
            return JSONResponse(
                {"error": {"message": "voice 'nobody' not found", "type": "invalid_request_error"}}, status_code=400
            )
        return Response(silent_wav(len(body["input"]) / 10), media_type="audio/wav")

    @app.post("/")
    async def piper(request: Request) -> Response:
        body = await request.json()
        state.requests.append(body)
        if body["text"] == "drop":  # half a WAV, then the connection goes

            async def half() -> Any:
                yield silent_wav(1.0)[:100]
                raise ConnectionResetError("server went away")

            return StreamingResponse(half(), media_type="audio/wav")
        return Response(silent_wav(len(body["text"]) / 20, rate=22050), media_type="audio/wav")

    return app
