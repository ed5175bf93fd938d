"""Uploads have limits per plan, and their owner lists and deletes them; each is an event."""

from __future__ import annotations

import uuid

import nats

from events.types import user_stream_id
from gateway.client import ApiError, TesseraClient
from streams import subjects as s
from streams.messages import DefinePlan
from tessera.admin import define_plan
from tests.conftest import Platform
from tests.e2e.test_inputs import tiny_png, wav_file

SENTENCE = "The quick brown fox jumps over the lazy dog."


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
        r = await client.post("/api/v1/uploads", files={"file": ("long.wav", wav_file(3.0), "audio/wav")})
        assert r.status_code == 413 and r.json()["code"] == "UPLOAD_TOO_LARGE", r.text  # the same, as a form
        r = await client.post("/api/v1/uploads", content=wav_file(2.0), headers={"Content-Type": "audio/wav"})
        assert r.status_code == 201  # 32,044 bytes
        r = await client.post("/api/v1/uploads", content=wav_file(2.0), headers={"Content-Type": "audio/wav"})
        assert r.status_code == 429 and r.json()["code"] == "UPLOAD_QUOTA_EXCEEDED"  # 64,088 > 50,000


async def test_a_browser_form_upload_is_stored_and_transcribed(platform: Platform) -> None:
    """multipart/form-data with a `file` part, as a browser's form sends it: the same checks as a raw
    body, and a WAV of speech from the default TTS model comes back as its words."""
    key = await platform.user_key("form-user")
    async with platform.client(key) as client:
        tts = (await client.post("/api/v1/jobs", json={"capability": "tts", "params": {"prompt": SENTENCE}})).json()
        done = await platform.wait_status(client, tts["job_id"], {"COMPLETED"}, timeout=60)
        assert done["model"] == "piper-joe"  # the default text-to-speech model
        wav = (await client.get(done["artifacts"][0]["url"])).content

        r = await client.post("/api/v1/uploads", files={"file": ("speech.wav", wav, "audio/wav")})
        assert r.status_code == 201, r.text
        stored = r.json()
        assert stored["content_type"] == "audio/wav" and stored["size_bytes"] == len(wav)
        assert stored["duration_seconds"] > 1
        stt = await client.post(
            "/api/v1/jobs", json={"capability": "stt", "params": {"input_upload": stored["upload_id"]}}
        )
        assert stt.status_code == 202, stt.text
        transcript = (await platform.wait_status(client, stt.json()["job_id"], {"COMPLETED"}, timeout=60))["artifacts"][
            0
        ]["text"]
        assert len(set(transcript.split()) & {"quick", "brown", "fox", "jumps", "lazy", "dog"}) >= 3, transcript

        # A part without a type (what a browser sends for an extension it does not know) is what its
        # bytes say; a part whose bytes say otherwise than its type is refused like a raw body.
        r = await client.post("/api/v1/uploads", files={"file": ("blob", tiny_png(), "application/octet-stream")})
        assert r.status_code == 201 and r.json()["content_type"] == "image/png", r.text
        r = await client.post("/api/v1/uploads", files={"file": ("x.wav", b"not audio", "audio/wav")})
        assert r.status_code == 422 and r.json()["code"] == "INVALID_UPLOAD", r.text
        r = await client.post("/api/v1/uploads", files={"file": ("x.zip", b"PK\x03\x04", "application/zip")})
        assert r.status_code == 415 and r.json()["code"] == "UNSUPPORTED_MEDIA_TYPE", r.text
        r = await client.post("/api/v1/uploads", files={"file": ("empty.wav", b"", "audio/wav")})
        assert r.status_code == 422 and r.json()["code"] == "EMPTY_UPLOAD", r.text

        # A form without a file part is a clear 422, not a 500 or a stored empty file.
        r = await client.post(
            "/api/v1/uploads", data={"other": "value"}, files={"attachment": ("a.wav", wav, "audio/wav")}
        )
        assert r.status_code == 422 and r.json()["code"] == "UPLOAD_FILE_MISSING", r.text
        assert "'file'" in r.json()["detail"]
        r = await client.post("/api/v1/uploads", data={"file": "not a file"}, files={"x": ("a", b"", "text/plain")})
        assert r.status_code == 422 and r.json()["code"] == "UPLOAD_FILE_MISSING", r.text

    async with TesseraClient(platform.api_url, key) as api:  # the typed client's helper
        typed = await api.upload_file(wav, "speech.wav")
        assert typed.content_type == "audio/wav" and typed.size_bytes == len(wav)
        try:
            await api.upload_file(b"not audio", "x.wav", "audio/wav")
        except ApiError as refused:
            assert refused.code == "INVALID_UPLOAD"
        else:
            raise AssertionError("a file that is not a WAV was stored")
