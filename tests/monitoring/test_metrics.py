"""The metrics the services export, read from this process's registry while a platform (gateway,
projector, scheduler, one worker) runs in it: jobs counted by capability and tier, the queue and
the fleet from the leader only, durations, tokens, lag, and the gateway's routes by template."""

from __future__ import annotations

import asyncio
import re

from prometheus_client import REGISTRY, generate_latest

from scheduler.service import Scheduler
from tests.conftest import Platform


def scrape() -> dict[str, float]:
    """Every sample of the registry, by its name and labels as exposed (`name{a="b"}`)."""
    samples = {}
    for line in generate_latest(REGISTRY).decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def value(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for key, number in samples.items():
        metric, _, rest = key.partition("{")
        if metric == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += number
    return total


async def test_a_job_is_counted_timed_and_charged_and_the_leader_exports_queue_and_fleet(platform: Platform) -> None:
    before = scrape()
    key = await platform.user_key(plan="pro")
    async with platform.client(key) as client:
        held = await client.post(
            "/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "metrics", "delay_seconds": 0.3}}
        )
        assert held.status_code == 202, held.text
        job_id = held.json()["job_id"]
        refused = await client.post(
            "/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "x", "model": "nope"}}
        )
        assert refused.status_code >= 400
        await platform.wait_status(client, job_id, {"COMPLETED"})
        await client.get(f"/api/v1/jobs/{job_id}")
    after = scrape()

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("tessera_jobs_submitted_total", capability="echo") == 2
    assert grew("tessera_jobs_admitted_total", capability="echo", tier="pro") == 1
    assert grew("tessera_jobs_completed_total", capability="echo", tier="pro") == 1
    assert grew("tessera_jobs_refused_total") == 1
    assert grew("tessera_tokens_charged_total", capability="echo", tier="pro") >= 0
    assert grew("tessera_job_wait_seconds_count", capability="echo") == 1
    assert grew("tessera_job_run_seconds_count", capability="echo") == 1
    assert grew("tessera_job_run_seconds_sum", capability="echo") >= 0.3
    assert grew("tessera_worker_jobs_total", capability="echo", outcome="COMPLETED") == 1
    assert grew("tessera_scheduler_commit_seconds_count") >= 2
    assert grew("tessera_http_requests_total", method="GET", route="/api/v1/jobs/{job_id}", status="200") >= 2
    assert not any(job_id in key for key in after), "a job id became a label"

    assert value(after, "tessera_scheduler_leader", scheduler="scheduler-a") == 1
    assert value(after, "tessera_workers_online") == 1
    assert value(after, "tessera_worker_slots", worker="w1") > 0
    assert value(after, "tessera_worker_last_heartbeat_timestamp_seconds", worker="w1") > 0
    assert 'tessera_queue_depth{model="",tier="pro"}' in after
    assert "tessera_outbox_lag_events" in after and "tessera_projector_lag_events" in after
    assert "tessera_events_head_sequence" in after


async def test_the_queue_depth_and_oldest_wait_follow_waiting_jobs(platform_parts: Platform) -> None:
    scheduler = Scheduler(
        platform_parts.settings, nats_url=platform_parts.nats_url, database_url=platform_parts.database_url
    )
    await platform_parts.start("scheduler", scheduler)
    await asyncio.wait_for(scheduler.is_leader.wait(), 10)
    await platform_parts.start_worker("one-slot", engines=("echo",), slots=1)
    key = await platform_parts.user_key(plan="starter")
    async with platform_parts.client(key) as client:
        jobs = []
        for prompt in ("hold", "a", "b"):
            params = {"prompt": prompt, "delay_seconds": 1.5}
            posted = await client.post("/api/v1/jobs", json={"capability": "echo", "params": params})
            assert posted.status_code == 202, posted.text
            jobs.append(posted.json()["job_id"])
        await platform_parts.wait_status(client, jobs[0], {"RUNNING"})
        await asyncio.sleep(0.5)
        samples = scrape()
        assert value(samples, "tessera_queue_depth", tier="starter", model="echo") == 2
        assert value(samples, "tessera_queue_oldest_wait_seconds", tier="starter", model="echo") >= 0.4
        assert value(samples, "tessera_worker_slots_busy", worker="one-slot") == 1
        for job_id in jobs:
            await platform_parts.wait_status(client, job_id, {"COMPLETED"})
    samples = scrape()
    assert value(samples, "tessera_queue_depth", tier="starter", model="echo") == 0
    assert 'tessera_queue_depth{model="",tier="starter"} 0.0' in generate_latest(REGISTRY).decode()


async def test_a_standby_scheduler_exports_its_role_and_no_queue_or_fleet(platform: Platform) -> None:
    standby = Scheduler(
        platform.settings, nats_url=platform.nats_url, database_url=platform.database_url, name="scheduler-b"
    )
    await platform.start("standby", standby)
    for _ in range(100):
        if standby.role.value == "standby":
            break
        await asyncio.sleep(0.05)
    text = generate_latest(REGISTRY).decode()
    assert 'tessera_scheduler_leader{scheduler="scheduler-b"} 0.0' in text
    assert 'tessera_scheduler_leader{scheduler="scheduler-a"} 1.0' in text
    # One leader's worth of fleet gauges: the standby adds none.
    assert len(re.findall(r"^tessera_workers_online ", text, re.MULTILINE)) == 1
    assert len(re.findall(r'^tessera_worker_slots\{worker="w1"\}', text, re.MULTILINE)) == 1
