"""Webhooks end to end: a user's endpoint and a job's own webhook hear start, progress and
completed, signed as Standard Webhooks says (checked with the reference library, `standardwebhooks`);
a rotated secret and the old one both sign during the grace period; 410 disables an endpoint;
the delivery log and a replay."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
import standardwebhooks

from tests.conftest import Platform
from tests.conftest import test_settings as settings_for_tests
from tests.webhook_receiver import Receiver, receiving
from webhooks.service import WebhookService


@contextlib.asynccontextmanager
async def webhook_service(platform: Platform, name: str = "webhooks") -> AsyncIterator[WebhookService]:
    settings = settings_for_tests(webhook_allow_http=True, webhook_allowlist=("127.0.0.1",))
    service = WebhookService(settings, nats_url=platform.nats_url, database_url=platform.database_url, poll_s=0.2)
    await platform.start(name, service)
    try:
        yield service
    finally:
        if name in platform.tasks:
            await platform.stop(name)


# The gateway takes http://127.0.0.1 URLs, as an operator allows for local testing.
LOCAL_HTTP = pytest.mark.settings(webhook_allow_http=True, webhook_allowlist=("127.0.0.1",))


@pytest.fixture
def allow_local_http(platform: Platform) -> Platform:
    assert platform.settings.webhook_allow_http, "mark the test with LOCAL_HTTP"
    return platform


def verify(secret: str, request: object) -> dict:
    return standardwebhooks.Webhook(secret).verify(request.body, request.headers)  # type: ignore[attr-defined, no-any-return]


@LOCAL_HTTP
async def test_an_endpoint_and_a_jobs_own_webhook_hear_the_job_signed_as_standard_webhooks_says(
    allow_local_http: Platform,
) -> None:
    platform = allow_local_http
    key = await platform.user_key()
    async with receiving() as receiver, webhook_service(platform), platform.client(key) as client:
        created = await client.post("/api/v1/webhooks", json={"url": f"{receiver.url}/account"})
        assert created.status_code == 201, created.text
        endpoint = created.json()
        assert endpoint["secret"].startswith("whsec_") and endpoint["events"] == ["start", "progress", "completed"]
        listed = (await client.get("/api/v1/webhooks")).json()["webhooks"]
        assert [w["webhook_id"] for w in listed] == [endpoint["webhook_id"]] and "secret" not in listed[0]
        job_secret = (await client.get("/api/v1/webhooks/job-secret")).json()["secret"]

        submitted = await client.post(
            "/api/v1/jobs",
            json={
                "capability": "echo",
                "params": {"prompt": "tell me", "delay_seconds": 1.5},
                "webhook": f"{receiver.url}/job",
                "webhook_events_filter": ["start", "completed"],
            },
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job_id"]
        await platform.wait_status(client, job_id, {"COMPLETED"})
        view = (await client.get(f"/api/v1/jobs/{job_id}")).json()

        job_calls = await receiver.wait_for(2, "/job")
        account = await receiver.wait_for(3, "/account")
        await asyncio.sleep(0.5)
        payloads = [verify(job_secret, r) for r in receiver.on("/job")]
        assert [p["type"] for p in payloads] == ["job.start", "job.completed"]
        completed = payloads[-1]["data"]
        assert completed["job_id"] == job_id and completed["status"] == "COMPLETED"
        assert completed["artifacts"][0]["id"] == view["artifacts"][0]["id"]
        assert completed["artifacts"][0]["signed_url"]  # a link that works without the key
        kinds = [verify(endpoint["secret"], r)["type"] for r in receiver.on("/account")]
        assert kinds[0] == "job.start" and kinds[-1] == "job.completed" and "job.progress" in kinds
        # Throttled: at most one progress every 500 ms of a 1.5 s job.
        assert kinds.count("job.progress") <= 4
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            verify(job_secret, account[0])  # each receiver's own secret
        assert len({r.headers["webhook-id"] for r in job_calls}) == 2

        log = (await client.get(f"/api/v1/webhooks/{endpoint['webhook_id']}/deliveries")).json()["deliveries"]
        assert {d["event_type"] for d in log} >= {"job.start", "job.completed"}
        first = log[-1]
        assert first["state"] == "delivered" and first["attempts"][0]["status"] == 200
        assert first["attempts"][0]["latency_ms"] >= 0 and first["attempts"][0]["response_excerpt"] == "answered 200"

        # A replay sends the same message again, with the same webhook-id.
        before = len(receiver.on("/account"))
        replayed = await client.post(
            f"/api/v1/webhooks/{endpoint['webhook_id']}/deliveries/{first['message_id']}/replay"
        )
        assert replayed.status_code == 202, replayed.text
        again = await receiver.wait_for(before + 1, "/account")
        assert again[-1].headers["webhook-id"] == first["message_id"]
        verify(endpoint["secret"], again[-1])


@LOCAL_HTTP
async def test_a_rotated_secret_and_the_old_one_both_sign_during_the_grace_period(
    allow_local_http: Platform,
) -> None:
    platform = allow_local_http
    key = await platform.user_key()
    async with receiving() as receiver, webhook_service(platform), platform.client(key) as client:
        endpoint = (
            await client.post("/api/v1/webhooks", json={"url": f"{receiver.url}/h", "events": ["completed"]})
        ).json()
        rotated = await client.post(f"/api/v1/webhooks/{endpoint['webhook_id']}/rotate", json={"grace_seconds": 3600})
        assert rotated.status_code == 201 and rotated.json()["secret"] != endpoint["secret"]
        assert rotated.json()["previous_secret_expires_at"] is not None
        job = (await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "r"}})).json()
        await platform.wait_status(client, job["job_id"], {"COMPLETED"})
        (request,) = await receiver.wait_for(1, "/h")
        assert len(request.headers["webhook-signature"].split(" ")) == 2
        assert verify(endpoint["secret"], request) == verify(rotated.json()["secret"], request)

        # Past the grace period only the new one signs.
        rotated_now = await client.post(f"/api/v1/webhooks/{endpoint['webhook_id']}/rotate", json={"grace_seconds": 0})
        job = (await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "s"}})).json()
        await platform.wait_status(client, job["job_id"], {"COMPLETED"})
        second = (await receiver.wait_for(2, "/h"))[1]
        verify(rotated_now.json()["secret"], second)
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            verify(rotated.json()["secret"], second)


@LOCAL_HTTP
async def test_410_gone_disables_the_endpoint_with_a_reason_its_owner_sees(allow_local_http: Platform) -> None:
    platform = allow_local_http
    key = await platform.user_key()
    async with (
        receiving(Receiver(statuses=[410])) as receiver,
        webhook_service(platform),
        platform.client(key) as client,
    ):
        endpoint = (
            await client.post("/api/v1/webhooks", json={"url": f"{receiver.url}/h", "events": ["start"]})
        ).json()
        job = (await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "g"}})).json()
        await platform.wait_status(client, job["job_id"], {"COMPLETED"})
        await receiver.wait_for(1, "/h")
        for _ in range(100):
            now = (await client.get(f"/api/v1/webhooks/{endpoint['webhook_id']}")).json()
            if not now["enabled"]:
                break
            await asyncio.sleep(0.1)
        assert now["enabled"] is False and "410" in now["disabled_reason"]
        job = (await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "h"}})).json()
        await platform.wait_status(client, job["job_id"], {"COMPLETED"})
        await asyncio.sleep(1)
        assert len(receiver.on("/h")) == 1  # nothing more to a disabled endpoint
        # Its owner turns it on again.
        enabled = await client.patch(f"/api/v1/webhooks/{endpoint['webhook_id']}", json={"enabled": True})
        assert enabled.json()["enabled"] is True and enabled.json()["disabled_reason"] is None


async def test_webhook_urls_are_checked_when_they_are_given(platform: Platform) -> None:
    key = await platform.user_key()
    async with platform.client(key) as client:
        for url in ("http://example.com/h", "https://127.0.0.1/h", "https://[::ffff:169.254.169.254]/h", "ftp://x/"):
            answer = await client.post("/api/v1/webhooks", json={"url": url})
            assert answer.status_code == 422 and answer.json()["code"] == "INVALID_WEBHOOK_URL", url
        job = await client.post(
            "/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "x"}, "webhook": "https://10.0.0.1/h"}
        )
        assert job.status_code == 422 and job.json()["code"] == "INVALID_WEBHOOK_URL"
        missing = await client.get(f"/api/v1/webhooks/{uuid.uuid4()}")
        assert missing.status_code == 404 and missing.json()["code"] == "WEBHOOK_NOT_FOUND"
