"""The typed client against the real gateway: every public route through one method, errors as
ApiError with their code, and a bot's key acting for the users it names."""

from __future__ import annotations

import asyncio
import io
import uuid
import wave

import httpx
import pytest

from gateway.client import ApiError, TesseraClient
from gateway.schemas import ProgressEvent, StatusEvent, TransitionEvent
from tests.conftest import Platform
from tests.e2e.test_inputs import tiny_png, wav_file


async def test_a_user_submits_follows_downloads_and_audits_a_job(platform: Platform) -> None:
    key = await platform.user_key("client-user")
    async with TesseraClient(platform.api_url, key) as api:
        accepted = await api.submit("tts", {"prompt": "Hello from the client"}, idempotency_key="first")
        assert accepted.status in ("QUEUED", "RUNNING") and accepted.cost_tokens > 0
        again = await api.submit("tts", {"prompt": "Hello from the client"}, idempotency_key="first")
        assert again.job_id == accepted.job_id  # the same request again is the same job

        streamed = [event async for event in api.stream(accepted.job_id)]
        assert all(isinstance(e, TransitionEvent | ProgressEvent | StatusEvent) for e in streamed)
        transitions = [e for e in streamed if isinstance(e, TransitionEvent)]
        assert [e.status for e in transitions] == ["CREATED", "QUEUED", "RUNNING", "RUNNING", "COMPLETED"]
        resumed = [e async for e in api.stream(accepted.job_id, last_event_id=3)]
        assert [e.version for e in resumed if isinstance(e, TransitionEvent)] == [4, 5]

        job = await api.job(accepted.job_id)
        assert job.status == "COMPLETED" and job.worker_id == "w1" and job.artifacts[0].content_type == "audio/wav"
        with wave.open(io.BytesIO(await api.artifact(job.artifacts[0]))) as wav:
            assert wav.getnframes() / wav.getframerate() > 0.5
        assert await api.artifact(job.artifacts[0].id) == await api.artifact(str(job.artifacts[0].id))

        history = await api.history(accepted.job_id)
        assert [e.type for e in history] == [e.type for e in transitions]
        assert history[-1].data["artifacts"][0]["id"] == str(job.artifacts[0].id)

        listed = await api.jobs(limit=1)
        assert [j.job_id for j in listed.jobs] == [accepted.job_id] and listed.next_before is not None
        assert (await api.jobs(before=listed.next_before)).jobs == []
        assert (await api.jobs(status="FAILED")).jobs == []


async def test_a_cancel_and_the_errors_come_back_typed(platform: Platform) -> None:
    key = await platform.user_key()
    async with TesseraClient(platform.api_url, key) as api:
        slow = await api.submit("echo", {"prompt": "slow", "delay_seconds": 20})
        cancelled = await api.cancel(slow.job_id)
        assert cancelled.job_id == slow.job_id and cancelled.status == "CANCELLED"
        with pytest.raises(ApiError) as terminal:
            await api.cancel(slow.job_id)
        assert terminal.value.status == 409 and terminal.value.code == "JOB_TERMINAL"
        assert terminal.value.extra["job_status"] == "CANCELLED"

        with pytest.raises(ApiError) as missing:
            await api.job(uuid.uuid4())
        assert (missing.value.status, missing.value.code) == (404, "JOB_NOT_FOUND")
        with pytest.raises(ApiError) as malformed:
            await api.job("not-a-job")
        assert (malformed.value.status, malformed.value.code) == (400, "INVALID_JOB_ID")
        with pytest.raises(ApiError) as unknown:
            await api.submit("painting", {"prompt": "x"})
        assert unknown.value.code == "UNKNOWN_CAPABILITY" and unknown.value.status == 422
        with pytest.raises(ApiError) as streamed:
            [e async for e in api.stream(uuid.uuid4())]
        assert streamed.value.code == "JOB_NOT_FOUND"
    async with TesseraClient(platform.api_url, "tsk_not-a-key") as stranger:
        with pytest.raises(ApiError) as refused:
            await stranger.me()
        assert (refused.value.status, refused.value.code) == (401, "INVALID_API_KEY")


async def test_a_user_uploads_lists_and_deletes_and_the_quota_says_when_to_retry(platform: Platform) -> None:
    key = await platform.user_key(plan="free")
    async with TesseraClient(platform.api_url, key) as api:
        stored = await api.upload(wav_file(1.0), "audio/wav")
        assert stored.content_type == "audio/wav" and stored.duration_seconds == 1.0
        assert [u.upload_id for u in (await api.uploads()).uploads] == [stored.upload_id]
        deleted = await api.delete_upload(stored.upload_id)
        assert deleted.upload_id == stored.upload_id and deleted.deleted
        assert (await api.uploads()).uploads == []
        for _ in range(11):  # the free plan's 12 a day, the deleted one counted
            await api.upload(tiny_png(), "image/png")
        with pytest.raises(ApiError) as over:
            await api.upload(tiny_png(), "image/png")
        assert over.value.status == 429 and over.value.code == "UPLOAD_QUOTA_EXCEEDED"
        assert over.value.retry_after is not None and 0 < over.value.retry_after <= 86400


async def test_a_user_manages_keys_and_reads_plans_models_and_health(platform: Platform) -> None:
    key = await platform.user_key("key-client")
    async with TesseraClient(platform.api_url, key) as api:
        created = await api.create_key("laptop")
        assert created.key.startswith(created.prefix) and created.label == "laptop"
        listed = (await api.keys()).keys
        assert [(k.label, k.current) for k in listed] == [(None, True), ("laptop", False)]
        rotated = await api.rotate_key(created.key_id, "laptop 2")
        assert rotated.label == "laptop 2" and rotated.key != created.key
        revoked = await api.revoke_key(rotated.key_id)
        assert revoked.key_id == rotated.key_id and revoked.revoked
        assert [k.revoked_at is not None for k in (await api.keys()).keys] == [False, True, True]

        me = await api.me()
        assert (me.platform, me.platform_user_id, me.registered) == ("web", "key-client", True)
        assert me.plan is not None and me.plan.tier == "pro" and me.limits.daily_tokens == 300
        assert me.today.tokens_remaining == 300

        plans = (await api.plans()).plans
        assert [p.tier for p in plans][:3] == ["free", "starter", "pro"]
        models = {m.name: m for m in (await api.models()).models}
        echo = next(m for m in models.values() if m.capability == "echo")
        assert echo.workers_online == 1 and echo.cost.unit == "none"
        assert (await api.health()).status == "ok"
        ready = await api.ready()
        assert ready.status == "ready" and ready.checks["postgres"] is True


async def test_a_bots_key_acts_for_the_user_it_names(platform: Platform) -> None:
    bot_key = await platform.frontend_key("telegram", "tg-1")
    async with TesseraClient(platform.api_url, bot_key) as bot:
        with pytest.raises(ApiError) as nobody:
            await bot.submit("echo", {"prompt": "for whom?"})
        assert (nobody.value.status, nobody.value.code) == (422, "USER_REF_REQUIRED")

        alice = bot.for_user("telegram:42")
        before = await alice.me()
        assert (before.platform, before.platform_user_id, before.registered) == ("telegram", "42", False)
        accepted = await alice.submit("echo", {"prompt": "hi from telegram"}, reply_context={"chat_id": 42})
        done = [e async for e in alice.stream(accepted.job_id)]
        assert isinstance(done[-1], TransitionEvent) and done[-1].status == "COMPLETED"
        job = await alice.job(accepted.job_id)
        assert (job.user_ref, job.frontend, job.bot_id) == ("telegram:42", "telegram", "tg-1")
        assert job.artifacts[0].text == "hi from telegram"

        with pytest.raises(ApiError) as not_hers:  # another user of the same bot sees none of it
            await bot.for_user("telegram:43").job(accepted.job_id)
        assert not_hers.value.code == "JOB_NOT_FOUND"
        with pytest.raises(ApiError) as keys:
            await alice.keys()
        assert (keys.value.status, keys.value.code) == (403, "USER_KEY_REQUIRED")
        with pytest.raises(ApiError) as platform_hop:
            await bot.for_user("discord:42").me()
        assert platform_hop.value.code == "USER_REF_NOT_ALLOWED"

    async with httpx.AsyncClient() as shared:  # the bot's own HTTP client, given to the API client
        same = TesseraClient(platform.api_url, bot_key, user_ref="telegram:42", http=shared)
        for _ in range(100):  # the read model lists the job once the projector has folded it
            listed = (await same.jobs()).jobs
            if listed:
                break
            await asyncio.sleep(0.05)
        assert [j.job_id for j in listed] == [accepted.job_id]
        await same.aclose()
        assert not shared.is_closed  # still the bot's
