"""`tessera up`: the whole platform on one machine, each service in its own process.

The services and how many of each come from `tessera.registry`. Each child gets a side port of
its own (TESSERA_SIDE_PORT); `up` waits for every child's `/readyz` and prints where they are.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import httpx

from base.config import Settings
from streams import connection
from tessera import nats_auth, runtime, signing_key
from tessera.admin import migrate
from tessera.embedded import EmbeddedPostgres, free_port
from tessera.registry import SERVICES

log = logging.getLogger("tessera.up")


@dataclass
class Child:
    name: str
    argv: list[str]
    role: str
    side_url: str  # its side port: /healthz, /readyz, /metrics
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    nats_url: str = ""  # its own credentials when `tessera up` runs the nats-server
    # Run once the children without one are ready, before this one starts (`ServiceSpec.prepare`).
    prepare: Callable[[Settings, str, str], Coroutine[Any, Any, object]] | None = None

    def start(self, env: dict[str, str]) -> None:
        env = {**env, "TESSERA_SIDE_PORT": self.side_url.rsplit(":", 1)[1]}
        if self.nats_url:
            env["TESSERA_NATS_URL"] = self.nats_url
        self.process = subprocess.Popen(self.argv, env=env, start_new_session=True)
        self.started_at = time.monotonic()

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.side_url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


def _children(settings: Settings, workers: int) -> list[Child]:
    """One child per process the registry has `up` start, each with a free side port."""
    me = [sys.executable, "-m", "tessera.cli"]
    host = socket.gethostname().split(".")[0] or "local"
    side_host = settings.side_host
    url_host = f"[{side_host}]" if ":" in side_host else side_host
    return [
        Child(
            instance.name,
            [*me, *instance.args],
            instance.role,
            side_url=f"http://{url_host}:{free_port(None, side_host)}",
            prepare=spec.prepare,
        )
        for spec in SERVICES
        for instance in spec.instances(workers=workers, host=host, settings=settings)
    ]


def _wait_ready(children: list[Child], stopping: Callable[[], bool], timeout: float = 120.0) -> list[str]:
    """Wait until every child's /readyz answers 200; the names of those that did not in time."""
    waiting = list(children)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline and not stopping():
        waiting = [child for child in waiting if not child.ready()]
        if waiting:
            time.sleep(0.2)
    return [child.name for child in waiting]


def _banner(title: str, api_url: str, nats: str, database_url: str, settings: Settings, children: list[Child]) -> str:
    width = max(len(child.name) for child in children)
    health = "".join(
        f"    {child.name:<{width}}  {child.side_url}/healthz  {child.side_url}/readyz\n" for child in children
    )
    return (
        f"\n{title}\n  Website  {api_url}/  (open it in a browser and sign up)\n"
        f"  API      {api_url}  (docs: {api_url}/docs)\n  NATS     {nats}\n"
        f"  Postgres {database_url}\n  Data     {settings.data_dir}\n"
        f"  Health and readiness of each service (metrics at /metrics):\n{health}"
        "Create a user:  tessera users create --platform web --user-id alice --plan pro\n"
        "Stop with Ctrl-C.\n"
    )


def _prepare(child: Child, settings: Settings, nats_url: str, database_url: str) -> None:
    """Run the child's `prepare`; a failure is logged (the child starts anyway and says what it lacks)."""
    assert child.prepare is not None
    try:
        asyncio.run(child.prepare(settings, nats_url, database_url))
    except (Exception, SystemExit) as exc:
        log.error("%s: preparing it failed: %s", child.name, exc)


def _supervise(children: list[Child], env: dict[str, str], stopping: Callable[[], bool]) -> None:
    """Restart a child that exits (backing off when it keeps failing at start) until `stopping()`."""
    while not stopping():
        time.sleep(0.5)
        for child in children:
            if child.process is not None and child.process.poll() is not None and not stopping():
                log.error("%s exited with %s; restarting", child.name, child.process.returncode)
                if time.monotonic() - child.started_at < 5:
                    time.sleep(min(2**child.restarts, 30))
                    child.restarts += 1
                child.start(env)


def _stop(children: list[Child], grace_s: float = 30.0) -> None:
    """SIGTERM every child, then kill those still running after `grace_s`."""
    for child in children:
        if child.process and child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        if child.process:
            try:
                child.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.process.kill()


def up(settings: Settings, *, http_port: int | None = None, workers: int = 1) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    embedded_nats = embedded_pg = credentials = None
    nats_url, database_url = settings.nats_url, settings.database_url
    children = _children(settings, workers)
    if not nats_url:  # an embedded server: one user per role, each service with its own
        credentials = nats_auth.Credentials(nats_auth.credentials_file(settings))
        parts = [role for spec in SERVICES if spec.nats_roles for role in spec.nats_roles(settings)]  # the bots
        credentials.ensure([*nats_auth.CORE_ROLES, *(child.role for child in children if child.role), *parts])
        embedded_nats = nats_auth.embedded_server(settings, credentials).start()
        nats_url = credentials.url(embedded_nats.url, "admin")
        for child in children:  # a child without a role of its own (the bots) gets the server, no user
            child.nats_url = (
                credentials.url(embedded_nats.url, child.role)
                if child.role
                else nats_auth.without_user(embedded_nats.url)
            )
    if not database_url:
        embedded_pg = EmbeddedPostgres(settings.data_dir / "postgres").start()
        database_url = embedded_pg.url
    asyncio.run(migrate(database_url, nats_url))

    port = free_port(http_port or settings.http_port, settings.http_host)
    api_url = f"http://{settings.http_host}:{port}"
    env = {
        **os.environ,
        "TESSERA_NATS_URL": nats_url,
        "TESSERA_DATABASE_URL": database_url,
        "TESSERA_HTTP_PORT": str(port),
        "TESSERA_API_URL": api_url,  # the bots' Tessera
        "TESSERA_DATA_DIR": str(settings.data_dir),
        "TESSERA_SIDE_HOST": settings.side_host,
        "TESSERA_URL_SIGNING_KEY": signing_key.ensure(settings),  # every gateway signs links alike
        "PYTHONUNBUFFERED": "1",
    }
    first = [child for child in children if child.prepare is None]
    for child in first:
        child.start(env)
    side_ports = json.dumps({child.name: child.side_url for child in children})  # `tessera status`, monitoring
    runtime.write(settings, nats_url=nats_url, database_url=database_url, api_url=api_url, services=side_ports)

    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        not_ready = _wait_ready(first, lambda: stopping)
        later = [child for child in children if child.prepare is not None and not stopping]
        for child in later:  # the bots: their frontend keys are issued through the services just started
            _prepare(child, settings, nats_url, database_url)
            child.start(env)
        not_ready += _wait_ready(later, lambda: stopping)
        if not stopping:
            if not_ready:
                log.error("not ready: %s; see the logs above", ", ".join(not_ready))
            users = f" (users and passwords: {credentials.path})" if credentials else ""
            title = f"Tessera is running, but not ready: {', '.join(not_ready)}." if not_ready else "Tessera is up."
            print(
                _banner(title, api_url, f"{connection.redacted(nats_url)}{users}", database_url, settings, children),
                flush=True,
            )
        _supervise(children, env, lambda: stopping)
    finally:
        _stop(children)
        runtime.clear(settings)
        if embedded_pg:
            embedded_pg.stop()
        if embedded_nats:
            embedded_nats.stop()
        print("Tessera stopped; data kept in", settings.data_dir, flush=True)
