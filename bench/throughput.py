"""End-to-end throughput and latency of `echo` jobs through the HTTP API, with the raw ceilings.

Starts the platform on the embedded default (fresh data dir, every component on this machine,
each service in its own process), then:
  1. raw ceilings: PostgreSQL batched insert rate, JetStream publish+ack rate;
  2. saturation: N echo jobs from M concurrent HTTP clients, as fast as they go;
  3. offered load: jobs at a fixed rate (default 200/s), for submit->dispatch latency.
Completion times are taken from the NATS subject frontends follow; dispatch times, in the
offered-load run only, from a copy of the workers' dispatch subjects.

    python bench/throughput.py --jobs 5000 --clients 64 --rate 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import httpx
import msgspec
import nats

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from base import db  # noqa: E402
from base.lifecycle import run_loop  # noqa: E402
from streams import connection  # noqa: E402
from tessera.admin import create_user, migrate  # noqa: E402
from tessera.embedded import EmbeddedNats, EmbeddedPostgres, free_port  # noqa: E402
from tessera.registry import SERVICES  # noqa: E402


def process_tree(root: int) -> list[int]:
    """`root` and every process descended from it (PostgreSQL's backends, for one)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(root: int) -> float:
    """User + system CPU time of a process tree, from /proc (Linux)."""
    total = 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds each component spent between `start()` and `stop()`.

    A component is a process tree given by its root pid, or None for this process alone (whose
    tree holds all the others)."""

    def __init__(self, roots: dict[str, int | None]) -> None:
        self.roots = roots
        self.before: dict[str, float] = {}
        self.spent: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) if pid is not None else time.process_time() for name, pid in self.roots.items()}

    def start(self) -> None:
        self.before = self._read()

    def stop(self) -> dict[str, float]:
        now = self._read()
        self.spent = {name: now[name] - self.before[name] for name in self.roots}
        return self.spent


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def pg_ceiling(database_url: str, rows: int = 50_000, batch: int = 500) -> float:
    async with db.connection(database_url, json_codec=False) as conn:
        await conn.execute("CREATE TEMP TABLE bench_rows (id uuid, n int, data jsonb)")
        started = time.perf_counter()
        for offset in range(0, rows, batch):
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO bench_rows SELECT u, n, d::jsonb FROM unnest($1::uuid[], $2::int[],"
                    " $3::text[]) AS t(u, n, d)",
                    [uuid.uuid4() for _ in range(batch)],
                    list(range(offset, offset + batch)),
                    ['{"type":"JobQueued.v1","priority":3}'] * batch,
                )
        elapsed = time.perf_counter() - started
    return rows / elapsed


async def js_ceiling(nats_url: str, messages: int = 50_000) -> float:
    async with connection.opened_once(nats_url, "bench-ceiling") as nc:
        js = nc.jetstream()
        await js.add_stream(name="BENCH_CEILING", subjects=["bench.ceiling"])
        payload = b'{"type":"JobQueued.v1","priority":3,"reason":"admitted"}'
        started = time.perf_counter()
        futures = [await js.publish_async("bench.ceiling", payload) for _ in range(messages)]
        await asyncio.gather(*futures)
        elapsed = time.perf_counter() - started
        await js.delete_stream("BENCH_CEILING")
    return messages / elapsed


class Tracker:
    """Timestamps of each job's submit, acceptance, dispatch and completion."""

    def __init__(self) -> None:
        self.submitted: dict[str, float] = {}
        self.accepted: dict[str, float] = {}
        self.dispatched: dict[str, float] = {}
        self.completed: dict[str, float] = {}
        self.done = asyncio.Event()
        self.expected = 0

    async def follow(self, nc: nats.NATS) -> None:
        """Take completion times from the relayed terminal events, as the gateway's server-sent
        events hear them (API jobs get no bot notification)."""

        async def on_done(msg: nats.aio.msg.Msg) -> None:
            self.completed.setdefault(msg.subject.split(".")[3], time.perf_counter())
            if self.expected and len(self.completed) >= self.expected:
                self.done.set()

        for kind in ("JobCompleted_v1", "JobFailed_v1", "JobCancelled_v1"):
            await nc.subscribe(f"tessera.events.job.*.{kind}", cb=on_done)

    async def tap_dispatches(self, nc: nats.NATS) -> None:
        """Also take dispatch times, from a copy of every dispatch. Only for the offered-load run:
        at saturation the copies would cost this process and nats-server CPU the platform needs."""

        async def on_dispatch(msg: nats.aio.msg.Msg) -> None:
            self.dispatched.setdefault(msgspec.json.decode(msg.data)["job_id"], time.perf_counter())

        await nc.subscribe("tessera.dispatch.>", cb=on_dispatch)


def client_session(api: str, key: str, connections: int) -> aiohttp.ClientSession:
    """The load generator's HTTP client: aiohttp, whose C parser costs a fraction of httpx's CPU per
    request, which matters because the load generator shares the two cores with the platform."""
    return aiohttp.ClientSession(
        base_url=api,
        headers={"Authorization": f"Bearer {key}"},
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=60),
    )


async def submit(client: aiohttp.ClientSession, tracker: Tracker, n: int) -> None:
    started = time.perf_counter()
    body = msgspec.json.encode({"capability": "echo", "params": {"prompt": f"bench {n}"}})
    async with client.post("/api/v1/jobs", data=body, headers={"Content-Type": "application/json"}) as r:
        raw = await r.read()
    if r.status != 202:
        raise RuntimeError(f"submit {n}: {r.status} {raw!r}")
    job_id = msgspec.json.decode(raw)["job_id"]
    tracker.submitted[job_id] = started
    tracker.accepted[job_id] = time.perf_counter()


def latencies(tracker: Tracker, ids: list[str], source: dict[str, float]) -> list[float]:
    return [(source[j] - tracker.submitted[j]) * 1000 for j in ids if j in source]


def latency_summary(tracker: Tracker, ids: list[str]) -> dict[str, float]:
    """p50 and p99 of submit->accept, submit->dispatch and submit->complete, in milliseconds."""
    out = {}
    for name, source in (
        ("accept", tracker.accepted),
        ("dispatch", tracker.dispatched),
        ("complete", tracker.completed),
    ):
        values = latencies(tracker, ids, source)
        out[f"{name}_p50"], out[f"{name}_p99"] = pct(values, 0.5), pct(values, 0.99)
    return out


async def saturate(
    api: str, key: str, tracker: Tracker, jobs: int, clients: int, meter: CpuMeter | None = None
) -> dict[str, float]:
    tracker.expected = len(tracker.completed) + jobs
    tracker.done.clear()
    before = set(tracker.submitted)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(jobs):
        queue.put_nowait(n)
    async with client_session(api, key, clients) as client:

        async def run_client() -> None:
            while not queue.empty():
                await submit(client, tracker, queue.get_nowait())

        if meter:
            meter.start()
        started = time.perf_counter()
        await asyncio.gather(*(run_client() for _ in range(clients)))
        submit_elapsed = time.perf_counter() - started
        await asyncio.wait_for(tracker.done.wait(), 300)
        total_elapsed = max(tracker.completed.values()) - started
        await asyncio.sleep(0.5)  # let the projector finish folding what it was given
        if meter:
            meter.stop()
    ids = [j for j in tracker.submitted if j not in before]
    return {
        "jobs": jobs,
        "submit_per_s": jobs / submit_elapsed,
        "completed_per_s": jobs / total_elapsed,
        **latency_summary(tracker, ids),
    }


async def offered(api: str, key: str, tracker: Tracker, rate: float, seconds: float) -> dict[str, float]:
    jobs = int(rate * seconds)
    tracker.expected = len(tracker.completed) + jobs
    tracker.done.clear()
    before = set(tracker.submitted)
    async with client_session(api, key, 200) as client:
        started = time.perf_counter()
        tasks = []
        for n in range(jobs):
            delay = started + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(submit(client, tracker, n)))
        await asyncio.gather(*tasks)
        await asyncio.wait_for(tracker.done.wait(), 120)
    ids = [j for j in tracker.submitted if j not in before]
    return {"jobs": jobs, "rate": rate, **latency_summary(tracker, ids)}


async def main(args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="tessera-bench-"))
    nats_server = EmbeddedNats(
        data / "nats", sync_interval=None if args.nats_sync == "default" else args.nats_sync
    ).start(preferred_port=None)
    pg = EmbeddedPostgres(data / "pg").start(preferred_port=None)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        await migrate(pg.url, nats_server.url)
        port = free_port(None)
        env = {
            **os.environ,
            "TESSERA_NATS_URL": nats_server.url,
            "TESSERA_DATABASE_URL": pg.url,
            "TESSERA_HTTP_PORT": str(port),
            "TESSERA_WORKER_ENGINES": "echo",
            "TESSERA_WORKER_SLOTS": str(args.slots),
        }
        for instance in (i for spec in SERVICES for i in spec.instances(workers=1, host="bench")):
            procs[instance.name] = subprocess.Popen(
                [sys.executable, "-m", "tessera.cli", *instance.args], env=env, cwd=REPO, stderr=subprocess.DEVNULL
            )
        api = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if httpx.get(f"{api}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
        _, key = await create_user(nats_server.url, pg.url, platform="web", user_id="bench", plan="admin")
        await asyncio.sleep(1.0)  # the worker's first heartbeat

        ceilings = {"pg_rows_per_s": await pg_ceiling(pg.url), "js_pub_ack_per_s": await js_ceiling(nats_server.url)}
        tracker = Tracker()
        async with connection.opened_once(nats_server.url, "bench-tracker") as nc:
            await tracker.follow(nc)
            await saturate(api, key, tracker, min(500, args.jobs), args.clients)  # warm-up
            roots: dict[str, int | None] = {  # every service tessera up runs (the webhook service too)
                ("worker" if name == "worker-0" else name): proc.pid for name, proc in procs.items()
            }
            roots |= {
                "nats-server": nats_server.process.pid,
                "PostgreSQL": int((pg.pgdata / "postmaster.pid").read_text().split()[0]),
                "load generator": None,
            }
            meter = CpuMeter(roots)
            sat = await saturate(api, key, tracker, args.jobs, args.clients, meter)
            await tracker.tap_dispatches(nc)
            load = await offered(api, key, tracker, args.rate, args.seconds)

        print(
            f"\nTessera bench: {os.cpu_count()} CPU(s), JetStream sync_interval {args.nats_sync}, "
            f"every component on this machine (nats-server, PostgreSQL 18, scheduler, projector, gateway, "
            f"1 echo worker with {args.slots} slots)\n"
        )
        print("| raw ceiling | rate |\n|---|---|")
        print(f"| PostgreSQL batched insert (500 rows/tx) | {ceilings['pg_rows_per_s']:,.0f} rows/s |")
        print(f"| JetStream publish + ack (async, 1 client) | {ceilings['js_pub_ack_per_s']:,.0f} msgs/s |\n")
        print(f"| saturation: {sat['jobs']} echo jobs, {args.clients} clients | value |\n|---|---|")
        print(f"| submit throughput (202s per second) | {sat['submit_per_s']:,.0f} jobs/s |")
        print(f"| end-to-end completions per second | {sat['completed_per_s']:,.0f} jobs/s |")
        for name in ("accept", "complete"):
            print(f"| submit->{name} p50 / p99 | {sat[name + '_p50']:.1f} / {sat[name + '_p99']:.1f} ms |")
        print(f"\n| CPU per job during saturation ({sat['jobs']} jobs) | ms |\n|---|---|")
        for name, seconds in meter.spent.items():
            print(f"| {name} | {1000 * seconds / sat['jobs']:.2f} |")
        print(f"| all | {1000 * sum(meter.spent.values()) / sat['jobs']:.2f} |")
        print(f"\n| offered load: {load['rate']:.0f} jobs/s for {args.seconds:.0f} s ({load['jobs']} jobs) | value |")
        print("|---|---|")
        for name in ("accept", "dispatch", "complete"):
            print(f"| submit->{name} p50 / p99 | {load[name + '_p50']:.1f} / {load[name + '_p99']:.1f} ms |")
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        pg.stop()
        nats_server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--slots", type=int, default=256, help="the echo worker's slots (echo's own: 256)")
    parser.add_argument(
        "--nats-sync",
        default="always",
        help="JetStream's sync_interval for the embedded nats-server: 'always' (Tessera's "
        "default) or 'default' (nats-server's own, every 2 minutes)",
    )
    run_loop(main(parser.parse_args()))
