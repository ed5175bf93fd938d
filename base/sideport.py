"""A process's side port: `/healthz`, `/readyz` and `/metrics`, served in its own event loop.

`/healthz` answers 200 while the process and its event loop are alive (answering at all proves
it). `/readyz` asks the service whether it can do its work: 200 with the checks when it can, 503
with what is missing when it cannot. `/metrics` is the process's prometheus_client registry.

The port is bound before the service starts, so it answers (not ready) while the service is still
connecting; with port 0 the kernel picks a free one, and the process logs which.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from base.health import Readiness
from base.metrics import record_readiness

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[Readiness]]

CHECK_TIMEOUT_S = 2.0

BUILD_INFO = Gauge(
    "tessera_build_info", "Always 1: the Tessera version and the service this process runs", ["version", "service"]
)


def version() -> str:
    try:
        return importlib.metadata.version("tessera")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class QuietServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signals to its owner (`base.lifecycle.serve`),
    for a server that runs inside a process rather than as the process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


class SidePort:
    """The side port of the service `name`, whose readiness `check` returns.

    Use it as `async with SidePort(...) as side:`; `side.port` is the port it got.
    """

    def __init__(
        self,
        name: str,
        check: ReadinessCheck,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        registry: CollectorRegistry = REGISTRY,
        check_timeout_s: float = CHECK_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.check = check
        self.host = host
        self.requested_port = port
        self.registry = registry
        self.check_timeout_s = check_timeout_s
        self.port = 0
        self._server: QuietServer | None = None
        self._task: asyncio.Task[None] | None = None
        if registry is REGISTRY:
            BUILD_INFO.labels(version=version(), service=name).set(1)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def app(self) -> Starlette:
        return Starlette(
            routes=[Route("/healthz", self._healthz), Route("/readyz", self._readyz), Route("/metrics", self._metrics)]
        )

    async def start(self) -> None:
        """Bind the port and serve it in a task of this event loop."""
        sock = bind(self.host, self.requested_port)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app(), log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1
        )
        self._server = QuietServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name=f"{self.name}-side-port")
        while not self._server.started:
            if self._task.done():  # it could not start: say why
                sock.close()
                self._task.result()
                raise RuntimeError(f"{self.name}: the side port stopped while starting")
            await asyncio.sleep(0.01)
        log.info(
            "%s: health at %s/healthz, readiness at %s/readyz, metrics at %s/metrics",
            self.name,
            self.url,
            self.url,
            self.url,
        )

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 5)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        except Exception:
            log.exception("%s: the side port failed", self.name)

    async def __aenter__(self) -> SidePort:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.stop()

    async def _healthz(self, _request: Request) -> Response:
        return JSONResponse({"service": self.name, "status": "ok"})

    async def _readyz(self, _request: Request) -> Response:
        readiness = await self._readiness()
        return JSONResponse(readiness.body(self.name), status_code=200 if readiness.ready else 503)

    async def _readiness(self) -> Readiness:
        try:
            readiness = await asyncio.wait_for(self.check(), self.check_timeout_s)
        except TimeoutError:
            readiness = Readiness(
                checks={"answered": False}, details={"error": f"the checks took over {self.check_timeout_s:.0f}s"}
            )
        except Exception as exc:  # a check that fails says so rather than taking the port down
            log.exception("%s: the readiness check failed", self.name)
            readiness = Readiness(checks={"answered": False}, details={"error": repr(exc)})
        return readiness

    async def _metrics(self, _request: Request) -> Response:
        if self.registry is REGISTRY:  # its readiness as gauges, fresh at each scrape
            record_readiness(self.name, await self._readiness())
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
