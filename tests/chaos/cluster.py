"""The platform as separate processes that can be killed with SIGKILL and started again.

nats-server and PostgreSQL are the embedded ones (`tessera.embedded`), each on its own port with
its data under the run's directory, so a restart finds the same port and the same data. Every
Tessera service is `python -m tessera.cli <service>`, its output appended to `<name>.log`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tessera.embedded import EmbeddedNats, EmbeddedPostgres, free_port

REPO = Path(__file__).resolve().parents[2]
LEADING = "holds the scheduler lock; leading"


@dataclass(frozen=True, kw_only=True)
class Timing:
    """The services' clocks: short, so a run settles fast, in the production ratio (heartbeat : timeout = 1 : 5)."""

    heartbeat_interval_s: float = 1.0
    worker_timeout_s: float = 5.0
    submit_timeout_s: float = 5.0
    max_attempts: int = 3


@dataclass
class Service:
    """One `tessera` service process; its log survives restarts (appended, each start marked)."""

    name: str
    args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    log_offset: int = 0  # where the current incarnation's output starts
    starts: int = 0

    def start(self, env: dict[str, str]) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"\n===== chaos: start #{self.starts + 1} at {time.time():.3f} =====\n".encode())
            log.flush()
            self.log_offset = log.tell()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tessera.cli", *self.args],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no goodbye, no drain, no flush."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def abort(self) -> None:
        """SIGABRT: faulthandler (on in every service) writes each thread's stack to the log, then it dies."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGABRT)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def terminate(self, grace_s: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def output(self) -> str:
        """What the current incarnation has written so far."""
        with self.log_path.open("rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")


@dataclass
class Cluster:
    """nats-server, PostgreSQL, two schedulers (leader and standby), the projector, the gateway and workers."""

    data_dir: Path
    timing: Timing = field(default_factory=Timing)
    # Unlike fleets: TTS runs on w2 alone, so its re-queued TTS jobs can only go back to it.
    workers: dict[str, str] = field(default_factory=lambda: {"w1": "echo", "w2": "echo,espeak"})
    nats: EmbeddedNats | None = None
    pg: EmbeddedPostgres | None = None
    http_port: int = 0
    services: dict[str, Service] = field(default_factory=dict)

    @property
    def worker_ids(self) -> list[str]:
        return list(self.workers)

    @property
    def nats_url(self) -> str:
        assert self.nats is not None
        return self.nats.url

    @property
    def database_url(self) -> str:
        assert self.pg is not None
        return self.pg.url

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def env(self) -> dict[str, str]:
        t = self.timing
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")},
            "TESSERA_NATS_URL": self.nats_url,
            "TESSERA_DATABASE_URL": self.database_url,
            "TESSERA_HTTP_PORT": str(self.http_port),
            "TESSERA_DATA_DIR": str(self.data_dir),
            "TESSERA_HEARTBEAT_INTERVAL": str(t.heartbeat_interval_s),
            "TESSERA_WORKER_TIMEOUT": str(t.worker_timeout_s),
            "TESSERA_SUBMIT_TIMEOUT": str(t.submit_timeout_s),
            "TESSERA_MAX_ATTEMPTS": str(t.max_attempts),
            "PYTHONUNBUFFERED": "1",
            "PYTHONFAULTHANDLER": "1",
        }

    # --- the servers -----------------------------------------------------------------------------

    def start_servers(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.nats = EmbeddedNats(self.data_dir / "nats").start(preferred_port=None)
        self.pg = EmbeddedPostgres(self.data_dir / "pg").start(preferred_port=None)
        self.http_port = free_port(None)

    def kill_nats(self) -> None:
        assert self.nats is not None and self.nats.process is not None
        self.nats.process.send_signal(signal.SIGKILL)
        self.nats.process.wait()

    def restart_nats(self) -> None:
        assert self.nats is not None
        port = self.nats.port
        for _ in range(100):
            self.nats.start(preferred_port=port)
            if self.nats.port == port:
                return
            self.nats.stop()  # the port was not free yet: another server must not take the clients
            time.sleep(0.1)
        raise RuntimeError(f"nats-server could not listen on port {port} again")

    def postmaster_pid(self) -> int:
        assert self.pg is not None
        return int((self.pg.pgdata / "postmaster.pid").read_text().split()[0])

    def kill_postgres(self) -> None:
        """SIGKILL the postmaster alone, as the OOM killer would; its backends notice and exit."""
        pid = self.postmaster_pid()
        os.kill(pid, signal.SIGKILL)
        while Path(f"/proc/{pid}").exists() and _state(pid) not in ("Z", "X"):
            time.sleep(0.01)

    def restart_postgres(self, timeout_s: float = 60.0) -> None:
        """Start the postmaster again on the same port once the orphaned backends have gone."""
        assert self.pg is not None
        port = self.pg.port
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.pg.start(preferred_port=port)
            except subprocess.CalledProcessError:  # backends of the old postmaster still hold its memory
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
                continue
            if self.pg.port == port:
                return
            self.pg.stop()
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL could not listen on port {port} again")
            time.sleep(0.2)

    # --- the services ----------------------------------------------------------------------------

    def add_services(self) -> None:
        plan = {
            "scheduler-a": ["scheduler"],
            "scheduler-b": ["scheduler"],
            "projector": ["projector"],
            "gateway": ["gateway"],
        }
        plan |= {f"worker-{w}": ["worker", "--worker-id", w, "--engines", e] for w, e in self.workers.items()}
        for name, args in plan.items():
            self.services[name] = Service(name, args, self.data_dir / f"{name}.log")

    def start(self, name: str) -> None:
        self.services[name].start(self.env())

    def schedulers(self) -> list[Service]:
        return [svc for name, svc in self.services.items() if name.startswith("scheduler")]

    def leader(self) -> Service | None:
        """The live scheduler whose current incarnation said it leads and has not said it stopped."""
        for svc in self.schedulers():
            if not svc.alive:
                continue
            out = svc.output()
            if out.rfind(LEADING) > out.rfind("leadership ended"):
                return svc
        return None

    async def wait_leader(self, timeout_s: float = 30.0) -> Service:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            svc = self.leader()
            if svc is not None:
                return svc
            await asyncio.sleep(0.05)
        raise RuntimeError("no scheduler took the lead")

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """The gateway answers /readyz with 200."""
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(base_url=self.api_url, timeout=2) as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"the gateway was not ready within {timeout_s:.0f}s")

    def stop_services(self, names: list[str] | None = None) -> None:
        chosen = [self.services[n] for n in names] if names else list(self.services.values())
        for svc in chosen:
            if svc.alive:
                assert svc.process is not None
                svc.process.send_signal(signal.SIGTERM)
        for svc in chosen:
            svc.terminate()

    def close(self) -> None:
        """Stop everything this cluster started, services first."""
        try:
            self.stop_services()
        finally:
            if self.pg is not None:
                with contextlib.suppress(Exception):
                    self.pg.stop()
            if self.nats is not None:
                self.nats.stop()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"
