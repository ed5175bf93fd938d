"""The gateway as a service like the others: `run()` serves the HTTP API until `stop()`.

`tessera gateway` runs it through `base.lifecycle.serve`, which owns the process's signals and
its side port; uvicorn here only serves the API.
"""

from __future__ import annotations

import uvicorn

from base import db
from base.config import Settings
from base.health import NOT_STARTED, Readiness
from base.sideport import QuietServer
from gateway.app import create_app
from gateway.deps import Services


class Gateway:
    def __init__(
        self, settings: Settings, *, nats_url: str, database_url: str, host: str | None = None, port: int | None = None
    ) -> None:
        self.app = create_app(settings, nats_url=nats_url, database_url=database_url)
        self.server = QuietServer(
            uvicorn.Config(
                self.app,
                host=host or settings.http_host,
                port=port or settings.http_port,
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=10,
            )
        )

    async def run(self) -> None:
        await self.server.serve()

    async def stop(self) -> None:
        self.server.should_exit = True

    async def readiness(self) -> Readiness:
        """Ready while it hears NATS and reaches PostgreSQL (what its own `/readyz` checks too)."""
        services: Services | None = getattr(self.app.state, "services", None)
        if services is None or not self.server.started:
            return NOT_STARTED
        return Readiness(
            checks={"nats": services.nc.is_connected, "database": await db.reachable(services.pool)},
            details={"workers_online": len(services.fleet.online())},
        )
