"""The webhook service killed (SIGKILL) in the middle of a delivery and started again: the message
is sent again with the same webhook-id, so the receiver, de-duplicating by it, has it once; nothing
is lost and nothing else is sent twice."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tests.conftest import TEST_URL_SIGNING_KEY, Platform
from tests.webhook_receiver import Receiver, receiving


@pytest.fixture
def local_webhooks(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> Platform:
    # The fixture's gateway holds this very (frozen) Settings object; the webhook service's process
    # reads the same two local-testing switches from its environment.
    assert platform.settings.webhook_allow_http, "the test is marked with its settings"
    monkeypatch.setenv("TESSERA_WEBHOOK_ALLOW_HTTP", "1")
    monkeypatch.setenv("TESSERA_WEBHOOK_ALLOWLIST", "127.0.0.1")
    monkeypatch.setenv("TESSERA_URL_SIGNING_KEY", TEST_URL_SIGNING_KEY)
    monkeypatch.setenv("TESSERA_SIDE_PORT", "0")
    return platform


@pytest.mark.settings(webhook_allow_http=True, webhook_allowlist=("127.0.0.1",))
async def test_killed_mid_delivery_and_restarted_the_service_delivers_once(local_webhooks: Platform) -> None:
    platform = local_webhooks
    key = await platform.user_key()
    async with receiving(Receiver(holds=[30])) as receiver, platform.client(key) as client:
        endpoint = (
            await client.post("/api/v1/webhooks", json={"url": f"{receiver.url}/h", "events": ["completed"]})
        ).json()
        first = platform.subprocess("webhooks", "run")
        try:
            jobs = []
            for prompt in ("one", "two"):
                job = (
                    await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": prompt}})
                ).json()
                await platform.wait_status(client, job["job_id"], {"COMPLETED"})
                jobs.append(job["job_id"])
            await receiver.wait_for(2, "/h", timeout=30)  # the first is being answered slowly, the second was
            await asyncio.sleep(1)  # and its answer is recorded
        finally:
            first.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.wait, 10)
        second = platform.subprocess("webhooks", "run")
        try:
            await receiver.wait_for(3, "/h", timeout=30)
            await asyncio.sleep(1.5)
            log = (await client.get(f"/api/v1/webhooks/{endpoint['webhook_id']}/deliveries")).json()["deliveries"]
        finally:
            second.send_signal(signal.SIGTERM)
            await asyncio.to_thread(second.wait, 20)
    ids = [r.headers["webhook-id"] for r in receiver.on("/h")]
    assert len(ids) == 3 and len(set(ids)) == 2  # the interrupted one twice, with one id; the other once
    assert {r.json["data"]["job_id"] for r in receiver.on("/h")} == set(jobs)
    assert sorted(d["state"] for d in log) == ["delivered", "delivered"]
    assert os.environ["TESSERA_WEBHOOK_ALLOW_HTTP"] == "1"
