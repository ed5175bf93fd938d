"""The FastAPI application and its lifecycle."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from nats.aio.msg import Msg
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from base import db
from base.config import Settings
from events.types import ApiKeyRevoked, FrontendKeyRevoked, decode_recorded
from gateway import errors
from gateway.contract import TesseraAPI
from gateway.deps import Services
from gateway.fleet import Fleet
from gateway.metrics import RequestMetrics
from gateway.routes import artifacts, feed, job_stream, jobs, keys, meta, quote, uploads, users, webhooks
from gateway.web import pages
from streams import connection
from streams import subjects as s
from streams.commands import CommandBus


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413 before any handler reads them."""

    def __init__(self, app: ASGIApp, limit: int, larger: dict[str, int] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.larger = larger or {}  # path -> its own limit (uploads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.larger.get(scope.get("path", "").rstrip("/"), self.limit)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, limit)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise errors.Problem(413, "BODY_TOO_LARGE", f"the body is larger than {limit} bytes")
            return message

        await self.app(scope, limited, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = errors.problem_response(
            413, "BODY_TOO_LARGE", f"the body is larger than {limit} bytes", scope.get("path")
        )
        await response(scope, receive, send)


def create_app(settings: Settings, *, nats_url: str, database_url: str) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        fleet = Fleet(stale_after_s=settings.worker_timeout_s)

        async def reconnected() -> None:
            fleet.reconnected()

        async with (
            connection.opened(nats_url, "gateway", reconnected_cb=reconnected) as nc,
            db.pool(database_url, min_size=2, max_size=20) as pool,
        ):
            bus = await CommandBus(nc, f"gw-{uuid.uuid4().hex[:8]}").start()
            await fleet.start(nc.jetstream())
            services = app.state.services = Services(settings=settings, pool=pool, nc=nc, bus=bus, fleet=fleet)

            async def on_revoked(msg: Msg) -> None:  # a key revoked on any gateway, by anyone
                with contextlib.suppress(msgspec.DecodeError):
                    event = decode_recorded(msg.data).data
                    if isinstance(event, ApiKeyRevoked | FrontendKeyRevoked):
                        services.key_revoked(event.key_id)

            revocations = [await nc.subscribe(subject, cb=on_revoked) for subject in s.KEYS_REVOKED]
            try:
                yield
            finally:
                for sub in revocations:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                await fleet.stop()
                await bus.close()

    app = TesseraAPI(
        settings,
        title="Tessera",
        version="0.1.0",
        lifespan=lifespan,
        description="Multi-modal AI inference: submit jobs, follow them, fetch their artifacts. "
        "Errors are application/problem+json with a stable `code`.",
    )
    errors.install(app)
    for router in (
        jobs.router,
        job_stream.router,
        feed.router,
        uploads.router,
        artifacts.router,
        users.router,
        keys.router,
        meta.router,
        quote.router,
        pages.router,
        webhooks.router,
    ):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=Path(pages.__file__).parent / "static"), name="static")
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, larger={"/api/v1/uploads": settings.max_upload_bytes})
    app.add_middleware(RequestMetrics)  # outermost: it times and counts every answer, a 413 too
    return app
