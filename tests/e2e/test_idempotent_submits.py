"""Idempotency-Key on POST /api/v1/jobs, as the IETF httpapi draft says: the same key with the same
body is the same job (also after a scheduler failover), the same key with another body is 422
IDEMPOTENCY_KEY_REUSED, and concurrent duplicates are decided one after the other."""

from __future__ import annotations

import asyncio

from scheduler.service import Scheduler
from tests.conftest import Platform

BODY = {"capability": "echo", "params": {"prompt": "once", "delay_seconds": 0.2}}


async def test_the_same_key_with_the_same_body_is_the_same_job_and_with_another_body_is_refused(
    platform: Platform,
) -> None:
    key = await platform.user_key()
    async with platform.client(key, **{"Idempotency-Key": "order-1"}) as client:
        first = await client.post("/api/v1/jobs", json=BODY)
        assert first.status_code == 202
        # The same request spelled differently (key order, the top-level model alias) is the same request.
        reordered = {"params": {"delay_seconds": 0.2, "prompt": "once"}, "capability": "echo"}
        again = await client.post("/api/v1/jobs", json=reordered)
        assert again.status_code == 202 and again.json()["job_id"] == first.json()["job_id"]

        other = await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "twice"}})
        assert other.status_code == 422
        assert other.headers["content-type"].startswith("application/problem+json")
        assert other.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
        await platform.wait_status(client, first.json()["job_id"], {"COMPLETED"})
        # Finished, the job is still what the key stands for.
        done = await client.post("/api/v1/jobs", json=BODY)
        assert done.json()["job_id"] == first.json()["job_id"] and done.json()["status"] == "COMPLETED"
    # Another user's same key is another job.
    async with platform.client(await platform.user_key(), **{"Idempotency-Key": "order-1"}) as client:
        theirs = await client.post("/api/v1/jobs", json=BODY)
        assert theirs.status_code == 202 and theirs.json()["job_id"] != first.json()["job_id"]


async def test_concurrent_duplicates_are_decided_one_after_the_other(platform: Platform) -> None:
    key = await platform.user_key()
    async with platform.client(key, **{"Idempotency-Key": "race"}) as client:
        other = {"capability": "echo", "params": {"prompt": "another"}}
        answers = await asyncio.gather(*(client.post("/api/v1/jobs", json=b) for b in (BODY, BODY, other, BODY)))
    accepted = [a for a in answers if a.status_code == 202]
    refused = [a for a in answers if a.status_code == 422]
    assert len({a.json()["job_id"] for a in accepted}) == 1
    assert len(accepted) + len(refused) == 4 and all(a.json()["code"] == "IDEMPOTENCY_KEY_REUSED" for a in refused)


async def test_a_new_scheduler_leader_still_knows_what_a_key_stood_for(platform: Platform) -> None:
    key = await platform.user_key()
    async with platform.client(key, **{"Idempotency-Key": "failover"}) as client:
        first = await client.post("/api/v1/jobs", json=BODY)
        assert first.status_code == 202
        await platform.wait_status(client, first.json()["job_id"], {"COMPLETED"})
        await platform.stop("scheduler")
        successor = Scheduler(
            platform.settings, nats_url=platform.nats_url, database_url=platform.database_url, name="scheduler-b"
        )
        await platform.start("scheduler-b", successor)
        await asyncio.wait_for(successor.is_leader.wait(), 10)
        again = await client.post("/api/v1/jobs", json=BODY)
        assert again.status_code == 202 and again.json()["job_id"] == first.json()["job_id"]
        other = await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "x"}})
        assert other.status_code == 422 and other.json()["code"] == "IDEMPOTENCY_KEY_REUSED"


async def test_the_openapi_document_describes_the_header(platform: Platform) -> None:
    async with platform.client() as client:
        document = (await client.get("/openapi.json")).json()
    parameters = document["paths"]["/api/v1/jobs"]["post"]["parameters"]
    header = next(p for p in parameters if p["name"] == "Idempotency-Key")
    assert "IDEMPOTENCY_KEY_REUSED" in header["description"]
    body = document["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "webhook" in body["properties"] and "webhook_events_filter" in body["properties"]


async def test_where_the_answer_goes_is_not_part_of_the_request_a_key_stands_for(platform: Platform) -> None:
    """A bot that handles a chat message again after a restart posts a new progress message: the
    reply context differs, and the retry is still the same job."""
    key = await platform.frontend_key("telegram", "tg-1")
    async with platform.client(key, **{"Idempotency-Key": "tg-1:77:5"}) as client:
        body = {"capability": "echo", "params": {"prompt": "hi"}, "user_ref": "telegram:77"}
        first = await client.post("/api/v1/jobs", json={**body, "reply_context": {"chat_id": 77, "message_id": 5}})
        again = await client.post("/api/v1/jobs", json={**body, "reply_context": {"chat_id": 77, "message_id": 6}})
        assert first.status_code == again.status_code == 202, first.text
        assert first.json()["job_id"] == again.json()["job_id"]
