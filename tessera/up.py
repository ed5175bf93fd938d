"""`tessera up`: the whole platform on one machine, each service in its own process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx

from streams import connection
from tessera import nats_auth, runtime
from tessera.admin import migrate
from base.config import Settings
from tessera.embedded import EmbeddedPostgres, free_port

log = logging.getLogger("tessera.up")


@dataclass
class Child:
    name: str
    argv: list[str]
    role: str
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    nats_url: str = ""  # its own credentials when `tessera up` runs the nats-server

    def start(self, env: dict[str, str]) -> None:
        if self.nats_url:
            env = {**env, "TESSERA_NATS_URL": self.nats_url}
        self.process = subprocess.Popen(self.argv, env=env, start_new_session=True)
        self.started_at = time.monotonic()


def _wait_ready(url: str, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def up(settings: Settings, *, http_port: int | None = None, workers: int = 1) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    embedded_nats = embedded_pg = credentials = None
    nats_url, database_url = settings.nats_url, settings.database_url
    me = [sys.executable, "-m", "tessera.cli"]
    host = socket.gethostname().split(".")[0] or "local"
    children = [Child(name, [*me, name], name) for name in ("scheduler", "projector", "gateway")]
    children += [Child(f"worker-{i}", [*me, "worker", "--worker-id", f"{host}-{i}"], f"worker:{host}-{i}")
                 for i in range(workers)]
    if not nats_url:  # an embedded server: one user per role, each service with its own
        credentials = nats_auth.Credentials(nats_auth.credentials_file(settings))
        credentials.ensure([*nats_auth.CORE_ROLES, *(child.role for child in children)])
        embedded_nats = nats_auth.embedded_server(settings, credentials).start()
        nats_url = credentials.url(embedded_nats.url, "admin")
        for child in children:
            child.nats_url = credentials.url(embedded_nats.url, child.role)
    if not database_url:
        embedded_pg = EmbeddedPostgres(settings.data_dir / "postgres").start()
        database_url = embedded_pg.url
    asyncio.run(migrate(database_url, nats_url))

    port = free_port(http_port or settings.http_port, settings.http_host)
    api_url = f"http://{settings.http_host}:{port}"
    env = {**os.environ, "TESSERA_NATS_URL": nats_url, "TESSERA_DATABASE_URL": database_url,
           "TESSERA_HTTP_PORT": str(port), "TESSERA_DATA_DIR": str(settings.data_dir), "PYTHONUNBUFFERED": "1"}
    for child in children:
        child.start(env)
    runtime.write(settings, nats_url=nats_url, database_url=database_url, api_url=api_url)

    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        if _wait_ready(api_url):
            users = f" (users and passwords: {credentials.path})" if credentials else ""
            print(f"\nTessera is up.\n  API      {api_url}  (docs: {api_url}/docs)\n"
                  f"  NATS     {connection.redacted(nats_url)}{users}\n"
                  f"  Postgres {database_url}\n  Data     {settings.data_dir}\n"
                  "Create a user:  tessera users create --platform web --user-id alice --plan pro\n"
                  "Stop with Ctrl-C.\n", flush=True)
        else:
            log.error("the gateway did not become ready; see the logs above")
        while not stopping:
            time.sleep(0.5)
            for child in children:
                assert child.process is not None
                if child.process.poll() is not None and not stopping:
                    log.error("%s exited with %s; restarting", child.name, child.process.returncode)
                    if time.monotonic() - child.started_at < 5:
                        time.sleep(min(2 ** child.restarts, 30))
                        child.restarts += 1
                    child.start(env)
    finally:
        for child in children:
            if child.process and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for child in children:
            if child.process:
                try:
                    child.process.wait(max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    child.process.kill()
        runtime.clear(settings)
        if embedded_pg:
            embedded_pg.stop()
        if embedded_nats:
            embedded_nats.stop()
        print("Tessera stopped; data kept in", settings.data_dir, flush=True)
