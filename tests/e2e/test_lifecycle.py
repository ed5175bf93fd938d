"""The whole lifecycle over HTTP against real NATS, PostgreSQL and a real worker."""

from __future__ import annotations

import io
import wave
from datetime import datetime

import httpx
import msgspec

from scheduler.service import Scheduler
from tests.conftest import Platform


def parse_sse(text: str) -> list[dict]:
    events = []
    for block in text.strip().split("\n\n"):
        fields: dict = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
        if "data" in fields:
            fields["data"] = msgspec.json.decode(fields["data"])
            events.append(fields)
    return events


async def test_tts_job_runs_end_to_end_and_serves_its_wav(platform: Platform) -> None:
    key = await platform.user_key()
    async with platform.client(key) as client:
        submitted = await client.post(
            "/api/v1/jobs", json={"capability": "tts", "params": {"prompt": "Hello from Tessera"}}
        )
        assert submitted.status_code == 202, submitted.text
        body = submitted.json()
        assert body["status"] in ("QUEUED", "RUNNING") and body["cost_tokens"] == 0.02
        job_id = body["job_id"]

        stream = await client.get(f"/api/v1/jobs/{job_id}/stream")
        assert stream.headers["content-type"].startswith("text/event-stream")
        transitions = [e for e in parse_sse(stream.text) if e["event"] == "transition"]
        assert [e["data"]["status"] for e in transitions] == ["CREATED", "QUEUED", "RUNNING", "RUNNING", "COMPLETED"]
        assert [int(e["id"]) for e in transitions] == [1, 2, 3, 4, 5]

        job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        assert job["status"] == "COMPLETED" and job["worker_id"] == "w1" and job["attempt"] == 1
        artifact = job["artifacts"][0]
        assert artifact["content_type"] == "audio/wav" and artifact["duration_seconds"] > 0.5

        download = await client.get(artifact["url"])
        assert download.status_code == 200 and download.headers["content-type"] == "audio/wav"
        with wave.open(io.BytesIO(download.content)) as wav:
            assert wav.getnchannels() == 1 and wav.getnframes() / wav.getframerate() > 0.5

        history = (await client.get(f"/api/v1/jobs/{job_id}/events")).json()
        assert [e["type"] for e in history] == [
            "JobSubmitted.v1",
            "JobQueued.v1",
            "JobDispatched.v1",
            "JobStarted.v1",
            "JobCompleted.v1",
        ]

        resumed = await client.get(f"/api/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": "3"})
        assert [int(e["id"]) for e in parse_sse(resumed.text)] == [4, 5]


async def test_echo_job_returns_its_prompt_inline_and_lists_newest_first(platform: Platform) -> None:
    key = await platform.user_key()
    async with platform.client(key) as client:
        ids = []
        for n in range(3):
            r = await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": f"ping {n}"}})
            ids.append(r.json()["job_id"])
        done = await platform.wait_status(client, ids[-1], {"COMPLETED"})
        assert done["artifacts"][0]["text"] == "ping 2"
        text = await client.get(done["artifacts"][0]["url"])
        assert text.text == "ping 2" and text.headers["content-type"].startswith("text/plain")
        for job_id in ids:
            await platform.wait_status(client, job_id, {"COMPLETED"})
        for _ in range(100):
            listed = [j["job_id"] for j in (await client.get("/api/v1/jobs")).json()["jobs"]]
            if len(listed) == 3:
                break
            await platform.wait_status(client, ids[0], {"COMPLETED"})
        assert listed == list(reversed(ids))
        me = (await client.get("/api/v1/user/me")).json()
        assert me["plan"]["tier"] == "pro" and me["today"]["jobs_completed"] == 3


async def test_frontend_key_acts_for_a_platform_user_created_on_first_sight(platform: Platform) -> None:
    key = await platform.frontend_key("telegram", "tg-1")
    nc = platform.tasks["worker:w1"][0]._nc  # type: ignore[attr-defined]
    assert nc is not None
    js = nc.jetstream()
    sub = await js.subscribe("tessera.done.telegram.tg-1.*", ordered_consumer=True)
    async with platform.client(key) as client:
        r = await client.post(
            "/api/v1/jobs",
            json={
                "capability": "echo",
                "params": {"prompt": "hi"},
                "user_ref": "telegram:123456",
                "reply_context": {"chat": 42},
            },
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        note = msgspec.json.decode((await sub.next_msg(timeout=10)).data)
        assert note["job_id"] == job_id and note["status"] == "COMPLETED"
        assert note["reply_context"] == {"chat": 42} and note["user_ref"] == "telegram:123456"
        assert note["artifacts"][0]["text"] == "hi"
        as_user = {"Tessera-User-Ref": "telegram:123456"}
        me = (await client.get("/api/v1/user/me", headers=as_user)).json()
        assert me["plan"]["tier"] == "free"
        assert (await client.get(f"/api/v1/jobs/{job_id}", headers=as_user)).status_code == 200
        other = await client.get(f"/api/v1/jobs/{job_id}", headers={"Tessera-User-Ref": "telegram:999"})
        assert other.status_code == 404
        wrong_platform = await client.get(f"/api/v1/jobs/{job_id}", headers={"Tessera-User-Ref": "discord:123456"})
        assert wrong_platform.status_code == 403 and wrong_platform.json()["code"] == "USER_REF_NOT_ALLOWED"
    await sub.unsubscribe()


async def test_openapi_docs_are_served(platform: Platform) -> None:
    async with httpx.AsyncClient(base_url=platform.api_url) as client:
        assert (await client.get("/docs")).status_code == 200
        spec = (await client.get("/openapi.json")).json()
        assert "/api/v1/jobs/{job_id}/stream" in spec["paths"]
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/readyz")).status_code == 200
        plans = (await client.get("/api/v1/plans")).json()["plans"]
        assert [p["tier"] for p in plans] == ["free", "starter", "pro", "admin"]
        models = {m["name"]: m for m in (await client.get("/api/v1/models")).json()["models"]}
        assert models["espeak-ng"]["workers_online"] == 1


async def test_a_quick_job_reports_its_start_inside_its_result(platform_parts: Platform) -> None:
    """Jobs that end within the worker's grace send no separate "started": one command and one
    event fewer per job, and the job still records when it started."""
    scheduler = Scheduler(
        platform_parts.settings, nats_url=platform_parts.nats_url, database_url=platform_parts.database_url
    )
    await platform_parts.start("scheduler", scheduler)
    await platform_parts.start_worker("quick", engines=("echo",), started_grace_s=5.0)
    key = await platform_parts.user_key()
    async with platform_parts.client(key) as client:
        job_id = (await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "hi"}})).json()[
            "job_id"
        ]
        job = await platform_parts.wait_status(client, job_id, {"COMPLETED"})
        history = (await client.get(f"/api/v1/jobs/{job_id}/events")).json()
    assert [e["type"] for e in history] == ["JobSubmitted.v1", "JobQueued.v1", "JobDispatched.v1", "JobCompleted.v1"]
    started = datetime.fromisoformat(job["started_at"])
    assert datetime.fromisoformat(job["created_at"]) <= started <= datetime.fromisoformat(job["ended_at"])
