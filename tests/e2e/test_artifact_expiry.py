"""Artifacts expire: the scheduler records ArtifactExpired, removes the bytes, and the API says 410."""

from __future__ import annotations

import asyncio

import asyncpg
import nats
from nats.js.errors import NotFoundError

from scheduler.service import Scheduler
from streams import subjects as s
from tests.conftest import Platform
from tests.conftest import test_settings as settings_for_tests


async def test_an_expired_artifact_is_removed_and_the_removal_is_an_event(platform_parts: Platform) -> None:
    await platform_parts.start(
        "scheduler",
        Scheduler(
            settings_for_tests(expiry_check_s=0.2),
            nats_url=platform_parts.nats_url,
            database_url=platform_parts.database_url,
        ),
    )
    await platform_parts.start_worker("short-lived", engines=("piper",), artifact_ttl_s=1.0)
    key = await platform_parts.user_key()
    async with platform_parts.client(key) as client:
        job_id = (
            await client.post("/api/v1/jobs", json={"capability": "tts", "params": {"prompt": "soon gone"}})
        ).json()["job_id"]
        artifact = (await platform_parts.wait_status(client, job_id, {"COMPLETED"}))["artifacts"][0]
        assert (await client.get(artifact["url"])).status_code == 200  # fresh: served
        for _ in range(100):
            gone = await client.get(artifact["url"])
            if gone.status_code == 410:
                break
            await asyncio.sleep(0.1)
    assert gone.status_code == 410 and gone.json()["code"] == "ARTIFACT_EXPIRED"
    conn = await asyncpg.connect(platform_parts.database_url)
    try:
        events = await conn.fetch("SELECT type, version FROM events WHERE stream_type = 'artifact'")
    finally:
        await conn.close()
    assert [(e["type"], e["version"]) for e in events] == [("ArtifactExpired.v1", 1)]  # once, however often checked
    nc = await nats.connect(platform_parts.nats_url)
    try:
        store = await nc.jetstream().object_store(s.ARTIFACTS_BUCKET)
        for _ in range(50):
            try:
                await store.get_info(f"jobs/{job_id}/1/{artifact['id']}.wav")
            except NotFoundError:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the expired artifact's bytes are still stored")
    finally:
        await nc.close()
