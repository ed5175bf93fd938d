"""What the HTTP engine adapters share: turning a server's refusal or a broken connection into the
job's error."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
import msgspec

from worker_node.engines.base import EngineError


async def server_error(response: httpx.Response, server: str) -> EngineError:
    """The server's own message, from the error shapes these APIs use: OpenAI's
    `{"error": {"message"}}`, whisper.cpp's `{"error": "..."}`, KoboldCPP's `{"detail": {"msg"}}`."""
    await response.aread()
    detail = response.text[:300]
    with contextlib.suppress(ValueError, msgspec.DecodeError):
        body = msgspec.json.decode(response.content)
        if isinstance(body, dict):
            error = body.get("error") or body.get("detail") or body
            detail = str(error.get("message") or error.get("msg") or error) if isinstance(error, dict) else str(error)
    code = "ENGINE_REJECTED" if 400 <= response.status_code < 500 else "ENGINE_ERROR"
    return EngineError(code, f"{server} answered {response.status_code}: {detail}")


@contextlib.contextmanager
def transport_errors(server: str, base_url: str) -> Iterator[None]:
    """A connection dropped mid-answer is ENGINE_DISCONNECTED; one never made, ENGINE_UNAVAILABLE."""
    try:
        yield
    except httpx.RemoteProtocolError as exc:
        raise EngineError("ENGINE_DISCONNECTED", f"{server} dropped the connection: {exc}") from exc
    except httpx.TransportError as exc:
        raise EngineError("ENGINE_UNAVAILABLE", f"{server} at {base_url}: {exc!r}") from exc


async def answers(client: httpx.AsyncClient, path: str, timeout_s: float = 3.0) -> bool:
    """Whether the server answers `GET path` at all (any status under 500): the engine's probe.
    A 5xx (a proxy with nothing behind it, llama-server still loading its model) is not up."""
    try:
        response = await client.get(path, timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return response.status_code < 500
