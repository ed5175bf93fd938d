"""A typed async client of Tessera's public API, for the CLI, the bots and the website.

Every public route has one method here, answering with the models of `gateway.schemas` (the same
ones the gateway answers with), so a frontend never declares the API again. An error answer
(application/problem+json) is raised as `ApiError`, with the stable `code` to branch on.

A user's key acts for that user; a frontend key (a bot's) acts for the user it names, by
`user_ref` (`telegram:123456`), given once to the client or per user with `for_user`. This module
imports httpx, pydantic and `gateway.schemas` only, so a bot imports it without the gateway.

    async with TesseraClient("http://localhost:8000", key) as api:
        job = await api.submit("tts", {"prompt": "Hello"})
        async for event in api.stream(job.job_id):
            ...
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from gateway.schemas import (
    ArtifactView,
    EventView,
    Health,
    JobAccepted,
    JobCancelled,
    JobCreate,
    JobList,
    JobView,
    KeyCreate,
    KeyList,
    KeyRevoked,
    Me,
    ModelList,
    NewKey,
    PlanList,
    ProgressEvent,
    Readiness,
    StatusEvent,
    StreamEvent,
    TransitionEvent,
    UploadDeleted,
    UploadList,
    UploadStored,
)

__all__ = ["ApiError", "TesseraClient"]

_Model = TypeVar("_Model", bound=BaseModel)
_EVENTS = TypeAdapter(list[EventView])
_STREAMED: dict[str, type[TransitionEvent | ProgressEvent | StatusEvent]] = {
    "transition": TransitionEvent,
    "progress": ProgressEvent,
    "status": StatusEvent,
}
Id = uuid.UUID | str


class ApiError(Exception):
    """The API refused or failed a request: `code` is its stable machine code (`JOB_NOT_FOUND`,
    `QUOTA_EXCEEDED`, ...), `extra` the problem's other fields, `retry_after` the seconds the
    server asks to wait (Retry-After), if it said."""

    def __init__(
        self, status: int, code: str, detail: str, extra: dict[str, Any] | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.extra = extra or {}
        self.retry_after = retry_after

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """The error an answer says; one that is not problem+json (a proxy's page) is `HTTP_ERROR`."""
        retry_after = _seconds(response.headers.get("retry-after"))
        try:
            body = response.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("code"), str):
            return cls(
                response.status_code,
                "HTTP_ERROR",
                response.text[:500] or response.reason_phrase,
                retry_after=retry_after,
            )
        extra = {k: v for k, v in body.items() if k not in ("type", "title", "status", "code", "detail")}
        return cls(response.status_code, body["code"], str(body.get("detail", "")), extra, retry_after)


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: not sent by Tessera
        return None


class TesseraClient:
    """The public API at `base_url`, with a user's key or a frontend's key acting for `user_ref`.

    It owns the HTTP client it creates (closed by `aclose` or the `async with` block); one given
    as `http` stays the caller's. `transport` replaces the network (an ASGI app, a mock).
    """

    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        user_ref: str | None = None,
        http: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.user_ref = user_ref
        self._key = key
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(transport=transport, timeout=timeout)

    def for_user(self, user_ref: str) -> TesseraClient:
        """The same key acting for another user (a bot serving many), sharing this client's connections."""
        return TesseraClient(self.base_url, self._key, user_ref=user_ref, http=self._http)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- jobs -----------------------------------------------------------------------------------

    async def submit(
        self,
        capability: str,
        params: Mapping[str, Any],
        *,
        reply_context: dict[str, Any] | None = None,
        frontend: str | None = None,
        bot_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> JobAccepted:
        """Submit a job; answered once the scheduler's acceptance is committed. With an
        `idempotency_key`, sending the same request again returns the same job."""
        body = JobCreate(
            capability=capability, params=dict(params), reply_context=reply_context, frontend=frontend, bot_id=bot_id
        )
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
        response = await self._request(
            "POST",
            "/api/v1/jobs",
            content=body.model_dump_json(exclude_none=True),
            headers={"Content-Type": "application/json", **headers},
        )
        return JobAccepted.model_validate_json(response.content)

    async def job(self, job_id: Id) -> JobView:
        """A job as it stands now (its queue position and estimate while it waits)."""
        return await self._get(f"/api/v1/jobs/{job_id}", JobView)

    async def jobs(self, *, limit: int = 50, before: datetime | None = None, status: str | None = None) -> JobList:
        """The user's jobs, newest first; pass `next_before` of a page as `before` for the next."""
        query: dict[str, str | int] = {"limit": limit}
        if before is not None:
            query["before"] = before.isoformat()
        if status is not None:
            query["status"] = status
        return await self._get("/api/v1/jobs", JobList, params=query)

    async def cancel(self, job_id: Id) -> JobCancelled:
        """Cancel a queued or running job (`JOB_TERMINAL` once it has finished)."""
        response = await self._request("DELETE", f"/api/v1/jobs/{job_id}")
        return JobCancelled.model_validate_json(response.content)

    async def history(self, job_id: Id) -> list[EventView]:
        """Every recorded event of the job, oldest first (the audit trail)."""
        response = await self._request("GET", f"/api/v1/jobs/{job_id}/events")
        return _EVENTS.validate_json(response.content)

    async def stream(self, job_id: Id, *, last_event_id: int | None = None) -> AsyncIterator[StreamEvent]:
        """The job's server-sent events until it ends: each transition, with progress and status
        updates while it runs. Resume after a broken connection with the last transition's `version`."""
        headers = {**self._auth(), "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        # The server sends something at least every 15 s; a read waits longer than that.
        timeout = httpx.Timeout(self._http.timeout.connect, read=60.0, write=None, pool=None)
        async with self._http.stream(
            "GET", self._url(f"/api/v1/jobs/{job_id}/stream"), headers=headers, timeout=timeout
        ) as response:
            if response.status_code >= 400:
                await response.aread()
                raise ApiError.from_response(response)
            async for kind, data, _ in _server_sent(response.aiter_lines()):
                model = _STREAMED.get(kind)
                if model is not None:  # an event kind this client does not know yet is skipped
                    yield model.model_validate_json(data)

    async def events(self, *, last_event_id: str | None = None) -> AsyncIterator[tuple[str | None, StreamEvent]]:
        """All of the user's unfinished jobs as one stream (`/api/v1/events`), as (cursor, event): each
        event names its `job_id`. It does not end by itself; resume after a broken connection with the
        last cursor that was not None."""
        headers = {**self._auth(), "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(self._http.timeout.connect, read=60.0, write=None, pool=None)
        async with self._http.stream("GET", self._url("/api/v1/events"), headers=headers, timeout=timeout) as response:
            if response.status_code >= 400:
                await response.aread()
                raise ApiError.from_response(response)
            async for kind, data, event_id in _server_sent(response.aiter_lines()):
                model = _STREAMED.get(kind)
                if model is not None:
                    yield (event_id if kind == "transition" else None), model.model_validate_json(data)

    async def artifact(self, artifact: ArtifactView | Id) -> bytes:
        """The bytes of a job's artifact, with this client's key. Someone without a key (a chat a bot
        posts a link to) fetches its `signed_url` instead, until `signed_url_expires_at`."""
        artifact_id = artifact.id if isinstance(artifact, ArtifactView) else artifact
        return (await self._request("GET", f"/api/v1/artifacts/{artifact_id}")).content

    # --- uploads --------------------------------------------------------------------------------

    async def upload(self, data: bytes, content_type: str) -> UploadStored:
        """Store an input file (sent as the raw body); a job names it as `params.input_upload`."""
        response = await self._request("POST", "/api/v1/uploads", content=data, headers={"Content-Type": content_type})
        return UploadStored.model_validate_json(response.content)

    async def upload_file(self, data: bytes, filename: str, content_type: str | None = None) -> UploadStored:
        """Store an input file sent as a browser sends it: the `file` part of a multipart/form-data
        body. Without `content_type` the gateway takes the type the file's bytes announce."""
        part = (filename, data, content_type or "application/octet-stream")
        response = await self._request("POST", "/api/v1/uploads", files={"file": part})
        return UploadStored.model_validate_json(response.content)

    async def uploads(self) -> UploadList:
        """The user's uploads still stored, newest first."""
        return await self._get("/api/v1/uploads", UploadList)

    async def delete_upload(self, upload_id: Id) -> UploadDeleted:
        response = await self._request("DELETE", f"/api/v1/uploads/{upload_id}")
        return UploadDeleted.model_validate_json(response.content)

    # --- keys (a user's own key only) -------------------------------------------------------------

    async def keys(self) -> KeyList:
        """The user's API keys, never the keys themselves."""
        return await self._get("/api/v1/keys", KeyList)

    async def create_key(self, label: str | None = None) -> NewKey:
        """Another API key for the user; `key` is in this answer only."""
        response = await self._request(
            "POST",
            "/api/v1/keys",
            content=KeyCreate(label=label).model_dump_json(),
            headers={"Content-Type": "application/json"},
        )
        return NewKey.model_validate_json(response.content)

    async def rotate_key(self, key_id: Id, label: str | None = None) -> NewKey:
        """A new key in place of `key_id`, which is revoked."""
        response = await self._request(
            "POST",
            f"/api/v1/keys/{key_id}/rotate",
            content=KeyCreate(label=label).model_dump_json(),
            headers={"Content-Type": "application/json"},
        )
        return NewKey.model_validate_json(response.content)

    async def revoke_key(self, key_id: Id) -> KeyRevoked:
        """Revoke a key: it stops working at once."""
        response = await self._request("DELETE", f"/api/v1/keys/{key_id}")
        return KeyRevoked.model_validate_json(response.content)

    # --- the user, plans, models, health ----------------------------------------------------------

    async def me(self) -> Me:
        """The user's plan, its limits and today's quota."""
        return await self._get("/api/v1/user/me", Me)

    async def plans(self) -> PlanList:
        return await self._get("/api/v1/plans", PlanList)

    async def models(self) -> ModelList:
        """Every model, its price, the plans that include it and the workers online that serve it."""
        return await self._get("/api/v1/models", ModelList)

    async def health(self) -> Health:
        return await self._get("/healthz", Health)

    async def ready(self) -> Readiness:
        """Whether the gateway reaches NATS and PostgreSQL; a gateway not ready answers too (503)."""
        response = await self._http.request("GET", self._url("/readyz"))
        if response.status_code not in (200, 503):
            raise ApiError.from_response(response)
        return Readiness.model_validate_json(response.content)

    # --- plumbing -------------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"  # absolute: a client given as `http` may have no base_url

    def _auth(self) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._key}"}
        if self.user_ref is not None:
            headers["Tessera-User-Ref"] = self.user_ref
        return headers

    async def _request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str | int] | None = None,
        files: Mapping[str, tuple[str, bytes, str]] | None = None,
    ) -> httpx.Response:
        response = await self._http.request(
            method,
            self._url(path),
            content=content,
            params=params,
            files=files,
            headers={**self._auth(), **(headers or {})},
        )
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        return response

    async def _get(self, path: str, model: type[_Model], *, params: Mapping[str, str | int] | None = None) -> _Model:
        response = await self._request("GET", path, params=params)
        return model.model_validate_json(response.content)


async def _server_sent(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str, str | None]]:
    """(event, data, last event id) of each server-sent event (the WHATWG event-stream format)."""
    kind, event_id = "message", None
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield kind, "\n".join(data), event_id
            kind, data = "message", []
            continue
        if line.startswith(":"):  # a comment
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
    if data:
        yield kind, "\n".join(data), event_id
