"""The gateway's metrics: each request's latency and status, by method and route template
(`/api/v1/jobs/{job_id}`, never the raw path, so a job id never becomes a label)."""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from base.metrics import LATENCY_BUCKETS, Children

_LABELS = ["method", "route"]
REQUESTS = Children(
    Counter("tessera_http_requests_total", "HTTP requests answered, by route template and status", [*_LABELS, "status"])
)
LATENCY = Children(
    Histogram(
        "tessera_http_request_duration_seconds",
        "From a request's arrival to its response's end (a stream's whole life), by route template",
        _LABELS,
        buckets=LATENCY_BUCKETS,
    )
)
UNMATCHED = "<unmatched>"  # a path no route answers: one label for all of them


class RequestMetrics:
    """ASGI middleware: count and time every HTTP request by its route's template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method = scope["method"]
            route = _template(scope)
            REQUESTS(method, route, str(status)).inc()
            LATENCY(method, route).observe(time.perf_counter() - started)


def _template(scope: Scope) -> str:
    """The template of the route that answered, as the router left it in the scope."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    app = scope.get("app")
    for candidate in getattr(getattr(app, "router", None), "routes", []):
        match, _ = candidate.matches(scope)
        if match is Match.FULL:
            return str(getattr(candidate, "path", UNMATCHED))
    return UNMATCHED
