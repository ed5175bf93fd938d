"""Text generation on LLM servers over HTTP: OpenAI-compatible chat and KoboldCPP's native API.

Both stream: each piece of text becomes the job's progress (`partial_text`), so a frontend shows
the answer as it is written. The number of generated tokens is the job's measured `usage`, which
is what the job is charged (docs/plans.md). Cancelling the job ends the stream. KoboldCPP is also
told to stop (`/api/extra/abort`); OpenAI-compatible servers stop when the client disconnects.

Which Tessera models a server serves is configuration: `models` maps a catalog model name to the
server's own model name (docs/engines.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec

from worker_node.engines.base import EngineError, JobContext, JobInput, Output
from worker_node.engines.http import answers, server_error, transport_errors

PROGRESS_EVERY_S = 0.25  # partial text goes out at most this often


def _messages(params: dict[str, Any]) -> list[dict[str, str]]:
    messages = params.get("messages")
    if messages is not None:
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise EngineError("INVALID_PARAMS", "params.messages must be a list of {role, content} strings")
        return messages
    out = []
    if isinstance(params.get("system"), str):
        out.append({"role": "system", "content": params["system"]})
    out.append({"role": "user", "content": str(params.get("prompt", ""))})
    return out


def _sampling(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("temperature", "top_p"):
        value = params.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise EngineError("INVALID_PARAMS", f"params.{name} must be a number")
            out[name] = value
    return out


class _Partial:
    """Accumulates streamed text and reports it as progress, at most every PROGRESS_EVERY_S."""

    def __init__(self, ctx: JobContext, max_tokens: int) -> None:
        self.ctx = ctx
        self.max_tokens = max_tokens
        self.pieces: list[str] = []
        self.tokens = 0
        self._last = 0.0

    async def add(self, text: str, tokens: int = 1) -> None:
        self.pieces.append(text)
        self.tokens += tokens
        now = time.monotonic()
        if now - self._last >= PROGRESS_EVERY_S:
            self._last = now
            await self.ctx.progress(min(1.0, self.tokens / self.max_tokens), None, self.text)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


async def _sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The `data:` payloads of a server-sent event stream."""
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            yield line[5:].strip()


class _HttpTextEngine:
    probe_path = "/"
    capabilities: tuple[str, ...] = ("text",)

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        models: dict[str, str],
        slots: int,
        timeout_s: float,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.model_map = dict(models)
        self.models = tuple(models)
        self.slots = slots
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout_s, connect=10.0)
        )

    def _max_tokens(self, params: dict[str, Any]) -> int:
        value = params.get("max_tokens", 256)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 32768:
            raise EngineError("INVALID_PARAMS", "params.max_tokens must be an integer from 1 to 32768")
        return value

    async def close(self) -> None:
        await self._client.aclose()

    async def probe(self) -> bool:
        """Whether the server answers; the worker withdraws this engine's models while it does not."""
        return await answers(self._client, self.probe_path)

    def _output(self, partial: _Partial) -> list[Output]:
        return [
            Output(
                kind="text",
                format="txt",
                content_type="text/plain; charset=utf-8",
                text=partial.text,
                usage={"output_tokens": float(partial.tokens)},
            )
        ]


class OpenAIChatEngine(_HttpTextEngine):
    probe_path = "/v1/models"
    """`POST /v1/chat/completions` with `stream: true`: llama.cpp's llama-server, vLLM,
    llama-cpp-python's server, and other OpenAI-compatible servers."""

    def __init__(
        self,
        base_url: str,
        models: dict[str, str],
        *,
        api_key: str | None = None,
        slots: int = 4,
        timeout_s: float = 300.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        super().__init__(
            name="openai", base_url=base_url, models=models, slots=slots, timeout_s=timeout_s, headers=headers
        )

    async def run(self, job: JobInput, ctx: JobContext) -> list[Output]:
        max_tokens = self._max_tokens(job.params)
        body = {
            "model": self.model_map[job.model],
            "messages": _messages(job.params),
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            **_sampling(job.params),
        }
        partial = _Partial(ctx, max_tokens)
        reported: int | None = None
        finished = False
        try:
            with transport_errors("the LLM server", self.base_url):
                async with self._client.stream("POST", "/v1/chat/completions", json=body) as response:
                    if response.status_code != 200:
                        raise await server_error(response, "the LLM server")
                    async for data in _sse_data(response):
                        if data == "[DONE]":
                            finished = True
                            break
                        chunk = msgspec.json.decode(data)
                        if chunk.get("error"):
                            raise EngineError("ENGINE_ERROR", f"the LLM server: {chunk['error'].get('message')}")
                        for choice in chunk.get("choices") or []:
                            piece = (choice.get("delta") or {}).get("content")
                            if piece:
                                await partial.add(piece)
                        usage = chunk.get("usage")
                        if usage and usage.get("completion_tokens") is not None:
                            reported = int(usage["completion_tokens"])
        except msgspec.DecodeError as exc:
            raise EngineError("ENGINE_ERROR", f"the LLM server sent a malformed chunk: {exc}") from exc
        if not finished:
            raise EngineError("ENGINE_DISCONNECTED", "the LLM server closed the stream before it finished")
        if reported is not None:  # the server's count beats ours (one chunk is not always one token)
            partial.tokens = reported
        return self._output(partial)


class KoboldEngine(_HttpTextEngine):
    probe_path = "/api/v1/model"
    """KoboldCPP's native API: `POST /api/extra/generate/stream` (one token per event), with
    `/api/extra/abort` on cancel and `/api/v1/model` to check what is loaded."""

    def __init__(
        self, base_url: str, models: dict[str, str], *, slots: int = 1, timeout_s: float = 300.0, stream: bool = True
    ) -> None:
        super().__init__(name="kobold", base_url=base_url, models=models, slots=slots, timeout_s=timeout_s)
        self.stream = stream  # False: the blocking /api/v1/generate, for servers without streaming

    async def loaded_model(self) -> str | None:
        """The server's model (`koboldcpp/<name>`), or None when it cannot be reached."""
        try:
            response = await self._client.get("/api/v1/model")
            return str(response.json().get("result")) if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def _prompt(self, params: dict[str, Any]) -> str:
        messages = _messages(params)
        if len(messages) == 1 and messages[0]["role"] == "user" and "messages" not in params:
            return messages[0]["content"]
        # A plain transcript: KoboldCPP applies no chat template of its own on this API.
        return "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"

    async def run(self, job: JobInput, ctx: JobContext) -> list[Output]:
        max_tokens = self._max_tokens(job.params)
        genkey = f"tessera-{job.job_id.hex[:12]}-{uuid.uuid4().hex[:6]}"
        body = {"prompt": self._prompt(job.params), "max_length": max_tokens, "genkey": genkey, **_sampling(job.params)}
        partial = _Partial(ctx, max_tokens)
        if not self.stream:
            return await self._generate(body, genkey, partial)
        try:
            async with self._aborting(genkey):
                async with self._client.stream("POST", "/api/extra/generate/stream", json=body) as response:
                    if response.status_code != 200:
                        raise await server_error(response, "KoboldCPP")
                    async for data in _sse_data(response):
                        event = msgspec.json.decode(data)
                        token = event.get("token")
                        if token:
                            await partial.add(token)
                        if event.get("finish_reason") not in (None, "null"):
                            break
        except msgspec.DecodeError as exc:
            raise EngineError("ENGINE_ERROR", f"KoboldCPP sent a malformed event: {exc}") from exc
        return self._output(partial)

    async def _generate(self, body: dict[str, Any], genkey: str, partial: _Partial) -> list[Output]:
        """`POST /api/v1/generate`: the whole text at once; `/api/extra/tokencount` counts it."""
        try:
            async with self._aborting(genkey):
                response = await self._client.post("/api/v1/generate", json=body)
                if response.status_code != 200:
                    raise await server_error(response, "KoboldCPP")
                text = "".join(r.get("text", "") for r in response.json().get("results", []))
                counted = await self._client.post("/api/extra/tokencount", json={"prompt": text})
                tokens = int(counted.json()["value"]) if counted.status_code == 200 else len(text.split())
        except (ValueError, KeyError, TypeError) as exc:
            raise EngineError("ENGINE_ERROR", f"KoboldCPP answered in an unexpected shape: {exc!r}") from exc
        await partial.add(text, tokens)
        return self._output(partial)

    @contextlib.asynccontextmanager
    async def _aborting(self, genkey: str) -> AsyncIterator[None]:
        """Transport failures as job errors; a cancelled job's generation stopped on the server."""
        try:
            with transport_errors("KoboldCPP", self.base_url):
                yield
        except asyncio.CancelledError:
            await asyncio.shield(self._abort(genkey))
            raise

    async def _abort(self, genkey: str) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await self._client.post("/api/extra/abort", json={"genkey": genkey}, timeout=5)


def model_map(spec: str) -> dict[str, str]:
    """`tessera-name=server-name,other` -> {tessera-name: server-name, other: other}."""
    out = {}
    for item in spec.split(","):
        item = item.strip()
        if item:
            ours, _, theirs = item.partition("=")
            out[ours.strip()] = (theirs or ours).strip()
    return out
