"""Where a job's completion goes belongs to frontend keys: a user cannot write into a bot's feed,
a bot cannot write into another bot's, and one person is one user whatever the spelling."""

from __future__ import annotations

import asyncio

import asyncpg
import nats

from streams import subjects as s
from tests.conftest import Platform


async def submitted(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM events WHERE type = 'JobSubmitted.v1'"))
    finally:
        await conn.close()


async def notifications_on(nats_url: str, subject: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(s.NOTIFY_STREAM, subjects_filter=subject)
        return sum((info.state.subjects or {}).values())
    finally:
        await nc.close()


async def test_a_user_key_cannot_post_into_a_bots_feed(platform: Platform) -> None:
    key = await platform.user_key()
    before = await submitted(platform.database_url)
    async with platform.client(key) as client:
        spoof = await client.post(
            "/api/v1/jobs",
            json={
                "capability": "echo",
                "params": {"prompt": "click evil.example"},
                "frontend": "telegram",
                "bot_id": "tg-img-1",
                "reply_context": {"chat_id": 999},
            },
        )
        assert spoof.status_code == 403 and spoof.json()["code"] == "FRONTEND_FIELDS_FORBIDDEN"
        for extra in ({"reply_context": {"chat_id": 999}}, {"bot_id": "tg-img-1"}, {"user_ref": "telegram:5"}):
            r = await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "x"}, **extra})
            assert r.status_code == 403 and r.json()["code"] == "FRONTEND_FIELDS_FORBIDDEN", extra
        own = await client.post(
            "/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "mine"}, "frontend": "api"}
        )
        assert own.status_code == 202
        await platform.wait_status(client, own.json()["job_id"], {"COMPLETED"})
    await asyncio.sleep(0.3)
    assert await notifications_on(platform.nats_url, "tessera.done.telegram.>") == 0
    # An API job is followed by SSE and webhooks: no bot reads a notification of it, none is written.
    assert await notifications_on(platform.nats_url, "tessera.done.>") == 0
    assert await submitted(platform.database_url) == before + 1  # the honest job only


async def test_a_bots_key_names_only_its_own_bot(platform: Platform) -> None:
    key = await platform.frontend_key("telegram", "tg-vid-1")
    async with platform.client(key, **{"Tessera-User-Ref": "telegram:42"}) as client:
        other = await client.post(
            "/api/v1/jobs",
            json={
                "capability": "echo",
                "params": {"prompt": "x"},
                "bot_id": "tg-img-1",
                "reply_context": {"chat_id": 1},
            },
        )
        assert other.status_code == 403 and other.json()["code"] == "WRONG_BOT"
        platform_hop = await client.post(
            "/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "x"}, "frontend": "discord"}
        )
        assert platform_hop.status_code == 403 and platform_hop.json()["code"] == "WRONG_FRONTEND"
        mine = await client.post(
            "/api/v1/jobs",
            json={
                "capability": "echo",
                "params": {"prompt": "x"},
                "bot_id": "tg-vid-1",
                "reply_context": {"chat_id": 1},
            },
        )
        assert mine.status_code == 202
        await platform.wait_status(client, mine.json()["job_id"], {"COMPLETED"})
    await asyncio.sleep(0.3)
    assert await notifications_on(platform.nats_url, "tessera.done.telegram.tg-img-1.>") == 0
    assert await notifications_on(platform.nats_url, "tessera.done.telegram.tg-vid-1.>") == 1


async def test_one_person_is_one_user_whatever_the_spelling(platform: Platform) -> None:
    key = await platform.frontend_key("telegram", "tg-1")
    async with platform.client(key) as client:
        for bad in ("telegram: 1", "telegram:1 ", "telegram:-1", "telegram:1e3", "telegram:", "Telegram:1"):
            r = await client.post(
                "/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "x"}, "user_ref": bad}
            )
            assert r.status_code == 422 and r.json()["code"] == "INVALID_USER_REF", bad
        ids = []
        for spelling in ("telegram:7", "telegram:007"):
            r = await client.post(
                "/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "x"}, "user_ref": spelling}
            )
            assert r.status_code == 202
            ids.append(r.json()["job_id"])
        client.headers["Tessera-User-Ref"] = "telegram:7"
        for job_id in ids:  # both are the same user's: readable as telegram:7
            done = await platform.wait_status(client, job_id, {"COMPLETED"})
            assert done["status"] == "COMPLETED"
