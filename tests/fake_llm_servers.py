"""Fake LLM servers that speak the real wire protocols, for the engine adapters' tests.

- `openai_app`: `POST /v1/chat/completions` streaming `chat.completion.chunk` objects as
  server-sent events, a final usage chunk when `stream_options.include_usage` is set, then
  `data: [DONE]`; errors as `{"error": {"message", "type", "code"}}`.
- `kobold_app`: KoboldCPP's `POST /api/extra/generate/stream` (`event: message` with
  `{"token", "finish_reason"}`), `POST /api/extra/abort` with the generation's `genkey`, and
  `GET /api/v1/model`.

The prompt chooses the behaviour: "fail" answers an error, "drop" cuts the connection halfway,
"slow" streams one token every 0.2 s until the client goes or is aborted ("slow N": N tokens, then
stops). Anything else streams the words of "the answer is forty two", cut to max_tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tessera.embedded import free_port

ANSWER = "the answer is forty two".split(" ")


@dataclass
class Recorder:
    requests: list[dict] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    disconnected: int = 0


def _tokens(prompt: str, limit: int) -> list[str]:
    return [w if i == 0 else f" {w}" for i, w in enumerate(ANSWER)][:limit]


class _Dropped(Exception):
    """Raised inside a streaming body: the server closes the connection mid-response."""


def openai_app(recorder: Recorder) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict[str, object]:
        return {
            "object": "list",
            "data": [{"id": m, "object": "model", "owned_by": "fake"} for m in ("served-model", "other-model")],
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request):  # type: ignore[no-untyped-def]
        body = await request.json()
        recorder.requests.append(body)
        if body.get("model") not in ("served-model", "other-model"):
            return JSONResponse(
                {
                    "error": {
                        "message": f"model '{body.get('model')}' not found",
                        "type": "invalid_request_error",
                        "code": "model_not_found",
                    }
                },
                status_code=404,
            )
        prompt = body["messages"][-1]["content"]
        if prompt == "fail":
            return JSONResponse(
                {
                    "error": {
                        "message": "context length exceeded",
                        "type": "invalid_request_error",
                        "code": "context_length_exceeded",
                    }
                },
                status_code=400,
            )

        def chunk(delta: dict, finish: str | None = None) -> str:
            return (
                "data: "
                + json.dumps(
                    {
                        "id": "chatcmpl-1",
                        "object": "chat.completion.chunk",
                        "created": int(time.time()),
                        "model": body["model"],
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    }
                )
                + "\n\n"
            )

        async def stream() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            sent = 0
            try:
                if prompt.startswith("slow"):  # "slow": ticks until the client goes; "slow N": N ticks
                    ticks = int(prompt.split()[1]) if " " in prompt else None
                    while ticks is None or sent < ticks:
                        await asyncio.sleep(0.2)
                        sent += 1
                        yield chunk({"content": " tick"})
                    yield chunk({}, "stop")
                    yield "data: [DONE]\n\n"
                    return
                tokens = _tokens(prompt, body.get("max_tokens", 256))
                # Like real servers, a chunk may carry more than one token: the last two go together.
                pieces = [[t] for t in tokens[:-2]] + ([tokens[-2:]] if len(tokens) >= 2 else [tokens])
                for n, piece in enumerate(pieces):
                    if prompt == "drop" and n == 2:
                        raise _Dropped
                    sent += len(piece)
                    yield chunk({"content": "".join(piece)})
            except asyncio.CancelledError:
                recorder.disconnected += 1
                raise
            yield chunk({}, "stop")
            if (body.get("stream_options") or {}).get("include_usage"):
                yield (
                    "data: "
                    + json.dumps(
                        {
                            "id": "chatcmpl-1",
                            "object": "chat.completion.chunk",
                            "choices": [],
                            "usage": {"prompt_tokens": 7, "completion_tokens": sent, "total_tokens": 7 + sent},
                        }
                    )
                    + "\n\n"
                )
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


def kobold_app(recorder: Recorder) -> FastAPI:
    app = FastAPI()
    running: dict[str, asyncio.Event] = {}

    @app.get("/api/v1/model")
    async def model() -> dict[str, str]:
        return {"result": "koboldcpp/fake-7b"}

    @app.post("/api/v1/generate")
    async def generate_blocking(request: Request):  # type: ignore[no-untyped-def]
        body = await request.json()
        recorder.requests.append(body)
        if body.get("prompt") == "fail":
            busy = {"msg": "Server is busy; please try again later.", "type": "service_unavailable"}
            return JSONResponse({"detail": busy}, status_code=503)
        text = "".join(_tokens(body.get("prompt", ""), body.get("max_length", 256)))
        return {"results": [{"text": text, "finish_reason": "length"}]}

    @app.post("/api/extra/tokencount")
    async def tokencount(request: Request) -> dict[str, object]:
        text = (await request.json()).get("prompt", "")
        return {"value": len(text.split()), "ids": []}

    @app.post("/api/extra/abort")
    async def abort(request: Request) -> dict[str, str]:
        genkey = (await request.json()).get("genkey", "")
        recorder.aborted.append(genkey)
        if genkey in running:
            running[genkey].set()
        return {"success": "true", "done": "true"}

    _kobold_stream_route(app, recorder, running)
    return app


def _kobold_stream_route(app: FastAPI, recorder: Recorder, running: dict[str, asyncio.Event]) -> None:
    """KoboldCPP's streaming generate: server-sent tokens, stopped by /api/extra/abort."""

    @app.post("/api/extra/generate/stream")
    async def generate(request: Request):  # type: ignore[no-untyped-def]
        body = await request.json()
        recorder.requests.append(body)
        prompt = body.get("prompt", "")
        if prompt == "fail":
            busy = {"msg": "Server is busy; please try again later.", "type": "service_unavailable"}
            return JSONResponse({"detail": busy}, status_code=503)
        stop = running.setdefault(body.get("genkey", ""), asyncio.Event())

        def event(token: str, finish: str | None) -> str:
            return "event: message\ndata: " + json.dumps({"token": token, "finish_reason": finish}) + "\n\n"

        async def stream() -> AsyncIterator[str]:
            if prompt == "slow":
                while not stop.is_set():
                    await asyncio.sleep(0.2)
                    yield event(" tick", None)
                yield event("", "abort")
                return
            tokens = _tokens(prompt, body.get("max_length", 256))
            for n, token in enumerate(tokens):
                if prompt == "drop" and n == 2:
                    raise _Dropped
                yield event(token, None)
            yield event("", "length" if len(tokens) == body.get("max_length") else "stop")

        return StreamingResponse(stream(), media_type="text/event-stream")


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Run `app` on a free local port; yields its base URL."""
    port = free_port(None)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


if __name__ == "__main__":  # a server in a process of its own, for tests that kill it: PORT
    import sys

    uvicorn.run(openai_app(Recorder()), host="127.0.0.1", port=int(sys.argv[1]), log_level="critical")
