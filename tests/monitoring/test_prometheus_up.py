"""Debian's Prometheus scrapes a running `tessera up` with the configuration `tessera monitoring
prometheus-config` prints: it sees jobs counted and the queue depth move, a killed worker raises
TesseraWorkerOffline (the shipped rule with its `for:` shortened), the dashboard's metrics are on
the side ports, and `tessera status` shows the platform on one screen.

Without the prometheus binary the test fails: the monitoring would go unchecked.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tessera.embedded import free_port
from tessera.monitoring import ALERTS
from tests.conftest import REPO
from tests.monitoring.dashboard import exported_names, queried_metrics
from tests.tessera_up import Up, tessera_up


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tessera.cli", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    """`tessera up` with one worker of one slot (the test waits for it itself, while it starts Prometheus)."""
    with tessera_up(tmp_path, wait=False, WORKER_SLOTS="1") as running:
        yield running


@pytest.fixture
async def prometheus_at(tmp_path: Path) -> AsyncIterator[tuple[Path, list[subprocess.Popen[bytes]]]]:
    """Where to write prometheus.yml, and the processes to end at the test's end."""
    processes: list[subprocess.Popen[bytes]] = []
    yield tmp_path / "prometheus.yml", processes
    for process in processes:
        process.kill()
        process.wait(10)


async def wait_for(check, what: str, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    for _ in range(int(timeout * 4)):
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.25)
    raise AssertionError(f"{what} did not happen within {timeout:.0f}s")


async def query(client: httpx.AsyncClient, promql: str) -> list[dict]:
    body = (await client.get("/api/v1/query", params={"query": promql})).json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def short_rules(path: Path) -> Path:
    """The shipped rules, with the worker-offline alert's `for:` cut from 5 minutes to 2 seconds."""
    rules = yaml.safe_load(ALERTS.read_text())
    for rule in rules["groups"][0]["rules"]:
        if rule["alert"] == "TesseraWorkerOffline":
            rule["for"] = "2s"
    path.write_text(json.dumps(rules))
    return path


@pytest.mark.timeout(300)
async def test_prometheus_scrapes_tessera_up_counts_jobs_and_alerts_on_a_killed_worker(
    up: Up, prometheus_at: tuple[Path, list[subprocess.Popen[bytes]]], tmp_path: Path
) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is missing: install Debian's prometheus package (apt-get install prometheus)"
    env, api, log = up.env, up.url, up.log
    async with httpx.AsyncClient(base_url=api, timeout=30) as anonymous:

        async def ready() -> bool:
            try:
                return (await anonymous.get("/readyz")).status_code == 200 and "Tessera is up." in log.read_text()
            except httpx.HTTPError:
                return False

        await wait_for(ready, "tessera up", timeout=180)
    key = run(env, "users", "create", "--platform", "web", "--user-id", "olive", "--plan", "pro").stdout.strip()

    # A second worker, outside `tessera up` (which would restart it), that the test kills.
    joined = run(env, "workers", "credentials", "--worker-id", "doomed")
    doomed_side = free_port(None)
    doomed_env = {
        **env,
        "TESSERA_NATS_URL": joined.stdout.strip().removeprefix("TESSERA_NATS_URL="),
        "TESSERA_SIDE_PORT": str(doomed_side),
    }
    doomed = subprocess.Popen(
        [sys.executable, "-m", "tessera.cli", "worker", "--worker-id", "doomed", "--engines", "echo", "--slots", "1"],
        env=doomed_env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    prometheus_at[1].append(doomed)

    config_path, processes = prometheus_at
    printed = run(
        env,
        "monitoring",
        "prometheus-config",
        "--scrape-interval",
        "1s",
        "--rules",
        str(short_rules(tmp_path / "rules.yml")),
    )
    assert printed.returncode == 0, printed.stderr
    config = yaml.safe_load(printed.stdout)
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs >= {"tessera-scheduler", "tessera-projector", "tessera-gateway", "tessera-worker"}
    targets_wanted = sum(len(job["static_configs"]) for job in config["scrape_configs"]) + 1  # and `doomed`
    worker_job = next(job for job in config["scrape_configs"] if job["job_name"] == "tessera-worker")
    worker_job["static_configs"].append(
        {"targets": [f"127.0.0.1:{doomed_side}"], "labels": {"process": "doomed", "worker": "doomed"}}
    )
    config_path.write_text(json.dumps(config))
    checked = subprocess.run(
        [shutil.which("promtool") or "promtool", "check", "config", str(config_path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    port = free_port(None)
    processes.append(
        subprocess.Popen(
            [
                prometheus,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as prom,
        httpx.AsyncClient(base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client,
    ):

        async def all_up() -> bool:
            try:
                targets = await query(prom, "up")
            except (httpx.HTTPError, ValueError):
                return False
            return len(targets) == targets_wanted and all(t["value"][1] == "1" for t in targets)

        await wait_for(all_up, "every target scraped")

        async def both_workers() -> bool:
            return await query(prom, "tessera_workers_online == 2") != []

        await wait_for(both_workers, "both workers counted by the leader")

        # Eight jobs of 1.5 s on two one-slot workers: six wait at first.
        job_ids = []
        for n in range(8):
            posted = await client.post(
                "/api/v1/jobs", json={"capability": "echo", "params": {"prompt": f"job {n}", "delay_seconds": 1.5}}
            )
            assert posted.status_code == 202, posted.text
            job_ids.append(posted.json()["job_id"])

        async def queue_moved() -> bool:
            return await query(prom, "sum(tessera_queue_depth) >= 2") != []

        await wait_for(queue_moved, "the queue depth rising")
        status = run(env, "status")
        assert status.returncode == 0, status.stderr

        async def all_counted() -> bool:
            counted = await query(prom, 'sum(tessera_jobs_completed_total{capability="echo", tier="pro"})')
            return bool(counted) and float(counted[0]["value"][1]) >= 8

        await wait_for(all_counted, "eight completed jobs counted")
        assert await query(prom, "sum(tessera_queue_depth) == 0") != []
        assert await query(prom, 'sum(tessera_http_requests_total{route="/api/v1/jobs", status="202"}) >= 8') != []

        # The screen, while jobs waited: the leader, both workers, the pro queue, today's jobs.
        screen = status.stdout
        assert "scheduler" in screen and "ready (leader)" in screen, screen
        assert "Scheduler: leader scheduler-" in screen and "doomed" in screen, screen
        assert "Workers: 2 online" in screen and "Queue:" in screen and "\n  pro " in screen, screen
        assert "Lag: outbox" in screen and "Today (since 00:00 UTC): " in screen, screen
        assert len(screen.splitlines()) <= 30, screen
        after = run(env, "status").stdout
        assert "Queue: 0 waiting" in after and "8 completed, 0 failed" in after and "failure rate 0.0 %" in after, after

        # Every metric a dashboard panel queries is on some side port (the bots do not run here).
        side_ports = json.loads(json.loads((Path(env["TESSERA_DATA_DIR"]) / "runtime.json").read_text())["services"])
        exported = {"up"}
        for url in side_ports.values():
            exported |= exported_names((await anonymous_get(f"{url}/metrics")).text)
        wanted = {name for name in queried_metrics() if not name.startswith("tessera_bot_")}
        # Counters and GPU gauges nothing has produced yet (no failure, no GPU here) have no line.
        unproduced = {
            "tessera_jobs_failed_total",
            "tessera_jobs_cancelled_total",
            "tessera_jobs_refused_total",
        }
        assert wanted - unproduced - exported == set()

        doomed.kill()
        doomed.wait(10)

        async def offline() -> list[dict]:
            alerts = (await prom.get("/api/v1/alerts")).json()["data"]["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "TesseraWorkerOffline" and a["state"] == "firing"]

        firing = await wait_for(offline, "TesseraWorkerOffline firing", timeout=30)
        assert firing[0]["labels"]["process"] == "doomed", firing


async def anonymous_get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url)
