"""What grows as the event log grows: sizes, nats-server memory, recovery, rebuild, latency, positions.

Starts the platform as bench/throughput.py does (embedded nats-server and PostgreSQL, every service
in its own process, one echo worker) and grows the log through the HTTP API in steps (echo jobs at
saturation, four events each). After each step it prints:
  - the database's size, the JetStream streams' bytes and messages, nats-server's resident memory;
  - scheduler recovery: SIGKILL of the leader, a new one started, time to the first 202;
  - `tessera projections rebuild`: its time, and GET /api/v1/jobs latency while it runs;
  - submit->complete p50/p99 at 200 jobs/s offered;
  - position error: with the worker paused, 200 jobs queue; each GET's `queue_position` (the
    gateway's snapshot) against the exact one the 202 gave (nothing moves while the worker waits).

    python bench/scale.py --steps 100000 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import msgspec

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]

from throughput import Tracker, client_session, offered, pct, saturate  # noqa: E402

from base import db  # noqa: E402
from base.lifecycle import run_loop  # noqa: E402
from streams import connection  # noqa: E402
from tessera.admin import create_user, migrate  # noqa: E402
from tessera.embedded import EmbeddedNats, EmbeddedPostgres, free_port  # noqa: E402


class Platform:
    def __init__(self, data: Path, nats_sync: str | None, nats_memory_limit_mb: int) -> None:
        self.nats = EmbeddedNats(
            data / "nats", sync_interval=nats_sync, memory_limit_mb=nats_memory_limit_mb or None
        ).start(preferred_port=None)
        self.pg = EmbeddedPostgres(data / "pg").start(preferred_port=None)
        self.port = free_port(None)
        self.env = {
            **os.environ,
            "TESSERA_NATS_URL": self.nats.url,
            "TESSERA_DATABASE_URL": self.pg.url,
            "TESSERA_HTTP_PORT": str(self.port),
            "TESSERA_WORKER_ENGINES": "echo",
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.api = f"http://127.0.0.1:{self.port}"

    def spawn(self, name: str, *args: str) -> None:
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "tessera.cli", *args], env=self.env, cwd=REPO, stderr=subprocess.DEVNULL
        )

    async def start(self) -> None:
        await migrate(self.pg.url, self.nats.url)
        for name in ("scheduler", "projector", "gateway"):
            self.spawn(name, name)
        self.spawn("worker", "worker", "--worker-id", "scale-0")
        for _ in range(300):
            try:
                if httpx.get(f"{self.api}/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.pg.stop()
        self.nats.stop()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def sizes(p: Platform) -> dict[str, Any]:
    async with db.connection(p.pg.url, json_codec=False) as conn:
        database = await conn.fetchval("SELECT pg_database_size(current_database())")
        events = await conn.fetchval("SELECT max(seq) FROM events")
    async with connection.opened_once(p.nats.url, "bench-scale-sizes") as nc:
        streams = [info async for info in _streams(nc.jetstream())]
    assert p.nats.process is not None
    return {
        "events": float(events or 0),
        "db_mb": database / 2**20,
        "nats_mb": sum(s.state.bytes for s in streams) / 2**20,
        "nats_msgs": float(sum(s.state.messages for s in streams)),
        "nats_rss_mb": rss_mb(p.nats.process.pid),
        "streams": {s.config.name: (s.state.bytes / 2**20, s.state.messages) for s in streams},
    }


async def _streams(js: object) -> object:  # the JetStream API lists streams page by page
    for name in ("TESSERA_COMMANDS", "TESSERA_DISPATCH", "TESSERA_EVENTS", "TESSERA_NOTIFY", "TESSERA_DEADLETTER"):
        yield await js.stream_info(name)  # type: ignore[attr-defined]


async def recovery(p: Platform, client: aiohttp.ClientSession) -> float:
    """SIGKILL the leader, start a new scheduler, seconds until a submit is accepted."""
    p.procs["scheduler"].kill()
    p.procs["scheduler"].wait()
    killed = time.perf_counter()
    p.spawn("scheduler", "scheduler")
    body = msgspec.json.encode({"capability": "echo", "params": {"prompt": "recovery"}})
    accepted = asyncio.Event()
    first: list[float] = []

    async def attempt() -> None:
        try:
            async with client.post("/api/v1/jobs", data=body, headers={"Content-Type": "application/json"}) as r:
                await r.read()
                if r.status == 202 and not accepted.is_set():
                    first.append(time.perf_counter() - killed)
                    accepted.set()
        except aiohttp.ClientError:
            pass

    tasks = []
    while not accepted.is_set() and time.perf_counter() - killed < 120:
        tasks.append(asyncio.create_task(attempt()))
        await asyncio.sleep(0.05)
    await asyncio.gather(*tasks)
    return first[0] if first else float("nan")


async def rebuild(p: Platform, client: aiohttp.ClientSession) -> tuple[float, list[float]]:
    """`tessera projections rebuild`: its seconds, and job-list latencies (ms) while it ran."""
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tessera.cli", "projections", "rebuild", env=p.env, cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    waited = asyncio.create_task(proc.wait())
    reads: list[float] = []
    while not waited.done():
        at = time.perf_counter()
        async with client.get("/api/v1/jobs?limit=20") as r:
            await r.read()
        reads.append((time.perf_counter() - at) * 1000)
        await asyncio.sleep(0.05)
    return time.perf_counter() - started, reads


async def position_error(p: Platform, client: aiohttp.ClientSession, jobs: int = 200) -> tuple[float, float]:
    """Median and largest |GET position - the 202's exact one| while the worker is paused."""
    worker = p.procs["worker"]
    worker.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(0.3)
        body = msgspec.json.encode({"capability": "echo", "params": {"prompt": "position", "delay_seconds": 1}})
        exact: dict[str, int] = {}
        # Fill the worker's free slots first: only jobs that stay queued have a position.
        for _ in range(jobs + 256):
            async with client.post("/api/v1/jobs", data=body, headers={"Content-Type": "application/json"}) as r:
                answer = msgspec.json.decode(await r.read())
            if answer.get("queue_position") is not None:
                exact[answer["job_id"]] = answer["queue_position"]
            if len(exact) >= jobs:
                break
        await asyncio.sleep(1.5)  # the projector's fold and the gateway's snapshot age
        errors = []
        for job_id, position in exact.items():
            async with client.get(f"/api/v1/jobs/{job_id}") as r:
                seen = msgspec.json.decode(await r.read()).get("queue_position")
            errors.append(abs((seen if seen is not None else 0) - position))
    finally:
        worker.send_signal(signal.SIGCONT)
    return pct([float(e) for e in errors], 0.5), float(max(errors, default=0))


async def main(args: argparse.Namespace) -> None:
    p = Platform(
        Path(tempfile.mkdtemp(prefix="tessera-scale-")),
        None if args.nats_sync == "default" else args.nats_sync,
        args.nats_memory_limit,
    )
    try:
        await p.start()
        _, key = await create_user(p.nats.url, p.pg.url, platform="web", user_id="scale", plan="admin")
        await asyncio.sleep(1.0)
        tracker = Tracker()
        made = 0
        print(
            "| jobs | events | database MB | NATS MB (msgs) | nats-server RSS MB | recovery s | rebuild s "
            "| job list during rebuild p50 / p99 / max ms | complete p50 / p99 at 200/s ms "
            "| position error median / max |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        async with connection.opened_once(p.nats.url, "bench-scale") as nc, client_session(p.api, key, 64) as client:
            await tracker.follow(nc)
            for target in args.steps:
                while made < target:
                    chunk = min(args.chunk, target - made)
                    await saturate(p.api, key, tracker, chunk, args.clients)
                    made += chunk
                    tracker.submitted.clear(), tracker.accepted.clear(), tracker.completed.clear()
                size = await sizes(p)
                recovered = await recovery(p, client)
                rebuilt, reads = await rebuild(p, client)
                load = await offered(p.api, key, tracker, args.rate, 5.0)
                median, worst = await position_error(p, client)
                await asyncio.sleep(2.0)  # the paused jobs run
                print(
                    f"| {made:,} | {size['events']:,.0f} | {size['db_mb']:,.0f} "
                    f"| {size['nats_mb']:,.0f} ({size['nats_msgs']:,.0f}) | {size['nats_rss_mb']:,.0f} "
                    f"| {recovered:.2f} | {rebuilt:.1f} "
                    f"| {pct(reads, 0.5):.1f} / {pct(reads, 0.99):.1f} / {max(reads, default=float('nan')):.1f} "
                    f"| {load['complete_p50']:.1f} / {load['complete_p99']:.1f} | {median:.0f} / {worst:.0f} |",
                    flush=True,
                )
                kept = ", ".join(f"{name} {mb:,.0f} MB ({n:,})" for name, (mb, n) in size["streams"].items())
                print(f"  streams at {made:,} jobs: {kept}", file=sys.stderr, flush=True)
    finally:
        p.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[100_000, 1_000_000], help="jobs after each step")
    parser.add_argument("--chunk", type=int, default=20_000, help="jobs per saturation burst while growing")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--nats-sync", default="default", help="'always' (tessera up's) or 'default' (nats-server's)")
    parser.add_argument(
        "--nats-memory-limit",
        type=int,
        default=384,
        help="nats-server's GOMEMLIMIT, MiB (0: none)",
    )
    run_loop(main(parser.parse_args()))
