"""How far the ETA a submit answers with is from the job's actual wait and run, on a mixed workload.

Starts the platform like bench/throughput.py (embedded nats-server and PostgreSQL, every service in
its own process) with two workers: one runs only `echo` on a few slots (each job held
--echo-delay seconds), the other the diagnostic image and video engines (4 and 2 slots). Jobs of
the three models arrive as Poisson streams at their own rates, near what their slots can do so
queues form and drain, for --seconds. For each job it keeps the 202's `estimated_time_seconds` and
the time from the submit to its completion notification, and prints the median absolute
percentage error, per model and overall.

    python bench/eta.py --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import msgspec

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]

from throughput import Tracker, client_session, pct  # noqa: E402

from base.lifecycle import run_loop  # noqa: E402
from streams import connection  # noqa: E402
from tessera.admin import create_user, migrate  # noqa: E402
from tessera.embedded import EmbeddedNats, EmbeddedPostgres, free_port  # noqa: E402

WORKERS = {"w-echo": ("echo", 4), "w-media": ("diagnostic-image,diagnostic-video", 6)}


def workload(args: argparse.Namespace) -> dict[str, tuple[float, dict[str, object]]]:
    """Model -> (arrivals per second, the request body)."""
    return {
        "echo": (args.echo_rate, {"capability": "echo", "params": {"prompt": "eta", "delay_seconds": args.echo_delay}}),
        "diagnostic-image": (
            args.image_rate,
            {"capability": "image", "model": "diagnostic-image", "params": {"prompt": "eta"}},
        ),
        "diagnostic-video": (
            args.video_rate,
            {"capability": "video", "model": "diagnostic-video", "params": {"prompt": "eta", "duration_seconds": 1}},
        ),
    }


async def start_platform(data: Path) -> tuple[EmbeddedNats, EmbeddedPostgres, dict[str, subprocess.Popen[bytes]], str]:
    nats_server = EmbeddedNats(data / "nats", sync_interval=None).start(preferred_port=None)
    pg = EmbeddedPostgres(data / "pg").start(preferred_port=None)
    await migrate(pg.url, nats_server.url)
    port = free_port(None)
    env = {**os.environ, "TESSERA_NATS_URL": nats_server.url, "TESSERA_DATABASE_URL": pg.url}
    env["TESSERA_HTTP_PORT"] = str(port)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for name in ("scheduler", "projector", "gateway"):
        procs[name] = subprocess.Popen([sys.executable, "-m", "tessera.cli", name], env=env, cwd=REPO)
    for worker_id, (engines, slots) in WORKERS.items():
        worker_env = {**env, "TESSERA_WORKER_ENGINES": engines, "TESSERA_WORKER_SLOTS": str(slots)}
        procs[worker_id] = subprocess.Popen(
            [sys.executable, "-m", "tessera.cli", "worker", "--worker-id", worker_id], env=worker_env, cwd=REPO
        )
    api = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{api}/readyz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)
    return nats_server, pg, procs, api


async def submit(client: aiohttp.ClientSession, body: bytes) -> tuple[str, float, float | None, int | None]:
    started = time.perf_counter()
    async with client.post("/api/v1/jobs", data=body, headers={"Content-Type": "application/json"}) as r:
        raw = await r.read()
    if r.status != 202:
        raise RuntimeError(f"submit: {r.status} {raw!r}")
    answer = msgspec.json.decode(raw)
    return answer["job_id"], started, answer.get("estimated_time_seconds"), answer.get("queue_position")


async def arrivals(
    client: aiohttp.ClientSession, rate: float, body: bytes, seconds: float, rng: random.Random
) -> list[tuple[str, float, float | None, int | None]]:
    """A Poisson stream of submits of one model for `seconds`."""
    tasks = []
    deadline = time.perf_counter() + seconds
    while True:
        await asyncio.sleep(rng.expovariate(rate))
        if time.perf_counter() >= deadline:
            break
        tasks.append(asyncio.create_task(submit(client, body)))
    return list(await asyncio.gather(*tasks))


async def main(args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="tessera-eta-"))
    nats_server, pg, procs, api = await start_platform(data)
    try:
        _, key = await create_user(nats_server.url, pg.url, platform="web", user_id="eta", plan="admin")
        await asyncio.sleep(3.0)  # both workers' first heartbeats
        tracker = Tracker()
        rng = random.Random(args.seed)
        mix = workload(args)
        async with connection.opened_once(nats_server.url, "bench-eta") as nc, client_session(api, key, 200) as client:
            await tracker.follow(nc)
            streams = {
                model: arrivals(client, rate, msgspec.json.encode(body), args.seconds, random.Random(rng.random()))
                for model, (rate, body) in mix.items()
                if rate > 0
            }
            results = dict(zip(streams, await asyncio.gather(*streams.values()), strict=True))
            ids = {job for jobs in results.values() for job, *_ in jobs}
            deadline = time.monotonic() + 600
            while not ids <= tracker.completed.keys() and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
        print(
            f"\nETA at submit against submit->completion, {os.cpu_count()} CPU(s), {args.seconds:.0f} s of "
            f"Poisson arrivals; workers: {', '.join(f'{w} ({e}, {s} slots)' for w, (e, s) in WORKERS.items())}\n"
        )
        print(
            "| model | offered/s | jobs | queued at submit | actual p50 / p90 s | ETA p50 / p90 s | median abs. error |"
        )
        print("|---|---|---|---|---|---|---|")
        every: list[float] = []
        for model, jobs in results.items():
            errors, actual, estimates = [], [], []
            for job, started, eta, _ in jobs:
                if job not in tracker.completed or eta is None:
                    continue
                took = tracker.completed[job] - started
                actual.append(took)
                estimates.append(eta)
                errors.append(abs(eta - took) / took)
            every.extend(errors)
            queued = sum(1 for *_, position in jobs if position is not None)
            print(
                f"| {model} | {mix[model][0]:g} | {len(jobs)} | {queued} "
                f"| {pct(actual, 0.5):.2f} / {pct(actual, 0.9):.2f} "
                f"| {pct(estimates, 0.5):.2f} / {pct(estimates, 0.9):.2f} | {100 * pct(errors, 0.5):.0f} % |"
            )
        print(f"| all | | {sum(len(j) for j in results.values())} | | | | {100 * pct(every, 0.5):.0f} % |")
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
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--echo-delay", type=float, default=0.5, help="how long each echo job runs")
    parser.add_argument("--echo-rate", type=float, default=7.0, help="echo arrivals per second (4 slots)")
    parser.add_argument("--image-rate", type=float, default=4.0, help="diagnostic-image arrivals per second")
    parser.add_argument("--video-rate", type=float, default=1.0, help="diagnostic-video arrivals per second")
    parser.add_argument("--seed", type=int, default=7)
    run_loop(main(parser.parse_args()))
