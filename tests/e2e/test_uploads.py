"""Uploads have limits per plan, and their owner lists and deletes them; each is an event."""

from __future__ import annotations

import uuid

import nats

from events.types import user_stream_id
from streams import subjects as s
from streams.messages import DefinePlan
from tessera.admin import define_plan
from tests.conftest import Platform
from tests.e2e.test_inputs import tiny_png, wav_file


async def stored_objects(nats_url: str, user_id: uuid.UUID) -> int:
    nc = await nats.connect(nats_url)
    try:
        store = await nc.jetstream().object_store(s.ARTIFACTS_BUCKET)
        try:
            objects = await store.list()
        except nats.js.errors.NotFoundError:  # an empty store
            return 0
        return sum(1 for o in objects if o.name.startswith(f"uploads/{user_id}/") and not o.deleted)
    finally:
        await nc.close()


async def test_the_thirteenth_upload_of_the_day_is_refused_on_the_free_plan(platform: Platform) -> None:
    key = await platform.user_key("uploader", plan="free")
    async with platform.client(key) as client:
        for n in range(12):
            r = await client.post("/api/v1/uploads", content=tiny_png(), headers={"Content-Type": "image/png"})
            assert r.status_code == 201, (n, r.text)
        r = await client.post("/api/v1/uploads", content=tiny_png(), headers={"Content-Type": "image/png"})
        assert r.status_code == 429 and r.json()["code"] == "UPLOAD_QUOTA_EXCEEDED", r.text
        assert 0 < int(r.headers["Retry-After"]) <= 86400
        # Deleting one does not give the day's upload back: the quota counts uploads made.
        first = (await client.get("/api/v1/uploads")).json()["uploads"][-1]["upload_id"]
        assert (await client.delete(f"/api/v1/uploads/{first}")).status_code == 200
        r = await client.post("/api/v1/uploads", content=tiny_png(), headers={"Content-Type": "image/png"})
        assert r.status_code == 429
    assert await stored_objects(platform.nats_url, user_stream_id("web", "uploader")) == 11  # 12 less the deleted


async def test_an_owner_lists_and_deletes_uploads_and_nobody_else_can(platform: Platform) -> None:
    alice, bob = await platform.user_key(), await platform.user_key()
    async with platform.client(alice) as a, platform.client(bob) as b:
        ids = [
            (await a.post("/api/v1/uploads", content=wav_file(1.0), headers={"Content-Type": "audio/wav"})).json()[
                "upload_id"
            ]
            for _ in range(2)
        ]
        listed = (await a.get("/api/v1/uploads")).json()["uploads"]
        assert [u["upload_id"] for u in listed] == ids[::-1] and listed[0]["duration_seconds"] == 1.0
        assert (await b.get("/api/v1/uploads")).json()["uploads"] == []
        r = await b.delete(f"/api/v1/uploads/{ids[0]}")
        assert r.status_code == 404 and r.json()["code"] == "UPLOAD_NOT_FOUND"
        r = await a.delete("/api/v1/uploads/nope")
        assert r.status_code == 400 and r.json()["code"] == "INVALID_UPLOAD_ID"
        assert (await a.delete(f"/api/v1/uploads/{ids[0]}")).status_code == 200
        assert [u["upload_id"] for u in (await a.get("/api/v1/uploads")).json()["uploads"]] == [ids[1]]
        r = await a.post("/api/v1/jobs", json={"capability": "stt", "params": {"input_upload": ids[0]}})
        assert r.status_code == 404 and r.json()["code"] == "UPLOAD_NOT_FOUND"  # its bytes are gone
        r = await a.post("/api/v1/jobs", json={"capability": "stt", "params": {"input_upload": ids[1]}})
        assert r.status_code == 202, r.text


async def test_a_plans_upload_size_and_bytes_per_day(platform: Platform) -> None:
    await define_plan(
        platform.nats_url,
        platform.database_url,
        DefinePlan(command_id=uuid.uuid4(), tier="starter", max_upload_bytes=40_000, upload_bytes_per_day=50_000),
    )
    key = await platform.user_key(plan="starter")
    async with platform.client(key) as client:
        r = await client.post("/api/v1/uploads", content=wav_file(3.0), headers={"Content-Type": "audio/wav"})
        assert r.status_code == 413 and r.json()["code"] == "UPLOAD_TOO_LARGE", r.text  # 48,044 bytes
        r = await client.post("/api/v1/uploads", content=wav_file(2.0), headers={"Content-Type": "audio/wav"})
        assert r.status_code == 201  # 32,044 bytes
        r = await client.post("/api/v1/uploads", content=wav_file(2.0), headers={"Content-Type": "audio/wav"})
        assert r.status_code == 429 and r.json()["code"] == "UPLOAD_QUOTA_EXCEEDED"  # 64,088 > 50,000
