"""Every bad input gets a problem+json with a stable code, and nothing is lost or created."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import nats

from streams import subjects as s
from tests.conftest import Platform


async def job_count(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM events WHERE stream_type = 'job'"))
    finally:
        await conn.close()


async def test_bad_requests_get_stable_problem_codes(platform: Platform) -> None:
    key = await platform.user_key()
    async with platform.client(key) as client:
        cases = [
            (
                client.post(
                    "/api/v1/jobs", content=b'{"capability": "echo", ', headers={"content-type": "application/json"}
                ),
                400,
                "MALFORMED_JSON",
            ),
            (
                client.post("/api/v1/jobs", json={"capability": "hologram", "params": {"prompt": "x"}}),
                422,
                "UNKNOWN_CAPABILITY",
            ),
            (
                client.post("/api/v1/jobs", json={"capability": "tts", "params": {"prompt": "x", "model": "nope"}}),
                422,
                "UNKNOWN_MODEL",
            ),
            (
                client.post(
                    "/api/v1/jobs", json={"capability": "image", "params": {"prompt": "x", "model": "espeak-ng"}}
                ),
                422,
                "UNKNOWN_MODEL",
            ),
            (
                client.post("/api/v1/jobs", json={"capability": "image", "params": {"prompt": "x", "width": "wide"}}),
                422,
                "VALIDATION_ERROR",
            ),
            (
                client.post("/api/v1/jobs", json={"capability": "image", "params": {"prompt": "x"}}),  # no sdxl worker
                503,
                "NO_CAPABLE_WORKER",
            ),
            (client.post("/api/v1/jobs", json={"capability": "echo", "params": {}}), 422, "MISSING_PROMPT"),
            (client.post("/api/v1/jobs", json={"capability": "echo"}), 422, "VALIDATION_ERROR"),
            (
                client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "x" * 300_000}}),
                413,
                "BODY_TOO_LARGE",
            ),
            (
                client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "x" * 9000}}),
                422,
                "PROMPT_TOO_LONG",
            ),
            (client.get("/api/v1/jobs/not-a-uuid"), 400, "INVALID_JOB_ID"),
            (client.get(f"/api/v1/jobs/{uuid.uuid4()}"), 404, "JOB_NOT_FOUND"),
            (client.delete(f"/api/v1/jobs/{uuid.uuid4()}"), 404, "JOB_NOT_FOUND"),
            (client.get("/api/v1/artifacts/zzz"), 400, "INVALID_ARTIFACT_ID"),
            (
                client.post(
                    "/api/v1/jobs",
                    json={"capability": "echo", "params": {"prompt": "x"}},
                    headers={"Idempotency-Key": "k" * 201},
                ),
                422,
                "VALIDATION_ERROR",
            ),
            (
                client.post("/api/v1/jobs", content=b"prompt=x", headers={"content-type": "text/plain"}),
                415,
                "UNSUPPORTED_MEDIA_TYPE",
            ),
            # Values the event log cannot hold, refused before they reach the scheduler (issue 11).
            (
                client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "a\u0000b"}}),
                422,
                "INVALID_CHARACTER",
            ),
            (
                client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "x", "k\u0000": 1}}),
                422,
                "INVALID_CHARACTER",
            ),
            (
                client.post(
                    "/api/v1/jobs",
                    json={"capability": "echo", "params": {"prompt": "x"}, "reply_context": {"chat": "\u0000"}},
                ),
                422,
                "INVALID_CHARACTER",
            ),
            (
                client.post(
                    "/api/v1/jobs",
                    content=b'{"capability": "echo", "params": {"prompt": "\\ud800"}}',
                    headers={"content-type": "application/json"},
                ),
                400,
                "MALFORMED_JSON",
            ),  # a lone surrogate
            (
                client.post(
                    "/api/v1/jobs",
                    content=b'{"capability": "echo", "params": {"prompt": "x", "n": NaN}}',
                    headers={"content-type": "application/json"},
                ),
                422,
                "INVALID_NUMBER",
            ),
            (
                client.post(
                    "/api/v1/jobs",
                    content=b'{"capability": "echo", "params": {"prompt": "x", "n": 1e999}}',
                    headers={"content-type": "application/json"},
                ),
                422,
                "INVALID_NUMBER",
            ),
            (
                client.post(
                    "/api/v1/jobs",
                    content=b'{"capability": "echo", "params": {"prompt": "x", "n": ' + b"[" * 199 + b"]" * 199 + b"}}",
                    headers={"content-type": "application/json"},
                ),
                422,
                "TOO_DEEP",
            ),
            (
                client.post(
                    "/api/v1/jobs",
                    content=b'{"capability": "echo", "params": {"prompt": "x", "n": ' + b"[" * 40 + b"]" * 40 + b"}}",
                    headers={"content-type": "application/json"},
                ),
                422,
                "TOO_DEEP",
            ),
            # Ranges the engines would only have refused after the 202.
            (
                client.post(
                    "/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "x", "delay_seconds": -1}}
                ),
                422,
                "VALIDATION_ERROR",
            ),
            (
                client.post(
                    "/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "x", "delay_seconds": 1e9}}
                ),
                422,
                "VALIDATION_ERROR",
            ),
            (
                client.post("/api/v1/jobs", json={"capability": "image", "params": {"prompt": "x", "steps": -5}}),
                422,
                "VALIDATION_ERROR",
            ),
            (
                client.post("/api/v1/jobs", json={"capability": "image", "params": {"prompt": "x", "steps": 10**9}}),
                422,
                "VALIDATION_ERROR",
            ),
            (client.get("/api/v1/jobs", params={"before": "0001-01-01T00:00:00+04:00"}), 422, "INVALID_TIME"),
        ]
        for request, status, code in cases:
            response = await request
            assert response.status_code == status, (code, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == code
    async with platform.client() as anonymous:
        missing = await anonymous.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "x"}})
        assert missing.status_code == 401 and missing.json()["code"] == "UNAUTHENTICATED"
    async with platform.client("tsk_wrong") as wrong:
        bad = await wrong.get("/api/v1/user/me")
        assert bad.status_code == 401 and bad.json()["code"] == "INVALID_API_KEY"
    assert await job_count(platform.database_url) == 0


async def test_another_users_job_and_artifact_are_not_found(platform: Platform) -> None:
    alice, bob = await platform.user_key(), await platform.user_key()
    async with platform.client(alice) as a, platform.client(bob) as b:
        job_id = (await a.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "mine"}})).json()[
            "job_id"
        ]
        done = await platform.wait_status(a, job_id, {"COMPLETED"})
        for response in (
            await b.get(f"/api/v1/jobs/{job_id}"),
            await b.get(f"/api/v1/jobs/{job_id}/events"),
            await b.get(f"/api/v1/jobs/{job_id}/stream"),
            await b.delete(f"/api/v1/jobs/{job_id}"),
            await b.get(done["artifacts"][0]["url"]),
        ):
            assert response.status_code == 404, response.text
        assert job_id not in [j["job_id"] for j in (await b.get("/api/v1/jobs")).json()["jobs"]]
        finished = await a.delete(f"/api/v1/jobs/{job_id}")
        assert finished.status_code == 409 and finished.json()["code"] == "JOB_TERMINAL"


async def test_undecodable_command_is_moved_aside_and_the_scheduler_keeps_serving(platform: Platform) -> None:
    nc = await nats.connect(platform.nats_url)
    js = nc.jetstream()
    await js.publish(s.CMD_SUBMIT, b"{this is not json")
    await js.publish(s.CMD_CANCEL, b'{"type": "job.cancel", "job_id": 12}')
    dead = await js.subscribe("tessera.dead.>", ordered_consumer=True)
    first, second = await dead.next_msg(timeout=10), await dead.next_msg(timeout=10)
    assert first.data == b"{this is not json" and "undecodable" in first.headers[s.HDR_ERROR]
    assert second.subject == "tessera.dead.cmd.job.cancel"
    await nc.close()
    key = await platform.user_key()
    async with platform.client(key) as client:
        r = await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "still here"}})
        assert r.status_code == 202
        await platform.wait_status(client, r.json()["job_id"], {"COMPLETED"})


async def test_the_same_submit_twice_creates_one_job(platform: Platform) -> None:
    key = await platform.user_key()
    async with platform.client(key, **{"Idempotency-Key": "order-17"}) as client:
        body = {"capability": "echo", "params": {"prompt": "once"}}
        first, second = await asyncio.gather(
            client.post("/api/v1/jobs", json=body), client.post("/api/v1/jobs", json=body)
        )
        assert first.status_code == second.status_code == 202
        assert first.json()["job_id"] == second.json()["job_id"]
        await platform.wait_status(client, first.json()["job_id"], {"COMPLETED"})
        third = await client.post("/api/v1/jobs", json=body)
        assert third.json()["job_id"] == first.json()["job_id"] and third.json()["status"] == "COMPLETED"
    conn = await asyncpg.connect(platform.database_url)
    try:
        rows = await conn.fetch(
            "SELECT type FROM events WHERE stream_id = $1 ORDER BY version", uuid.UUID(first.json()["job_id"])
        )
    finally:
        await conn.close()
    assert [r["type"] for r in rows].count("JobSubmitted.v1") == 1
    assert [r["type"] for r in rows].count("JobCompleted.v1") == 1
