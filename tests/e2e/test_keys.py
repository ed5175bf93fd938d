"""Keys can be listed, created, revoked and rotated, each an event; a revoked key stops working at
once, even on a gateway that has it cached."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from tessera.admin import list_keys, revoke_key, rotate_key
from tests.conftest import Platform


async def status_of(platform: Platform, key: str) -> int:
    async with platform.client(key) as client:
        return (await client.get("/api/v1/jobs")).status_code


async def test_a_user_creates_lists_revokes_and_rotates_keys(platform: Platform) -> None:
    first = await platform.user_key("keyholder")
    async with platform.client(first) as client:
        created = await client.post("/api/v1/keys", json={"label": "laptop"})
        assert created.status_code == 201, created.text
        second, second_id = created.json()["key"], created.json()["key_id"]
        assert await status_of(platform, second) == 200
        listed = (await client.get("/api/v1/keys")).json()["keys"]
        assert [k["label"] for k in listed] == [None, "laptop"] and [k["current"] for k in listed] == [True, False]
        assert all("key" not in k for k in listed)  # never the key itself

    async with platform.client(second) as client:
        first_id = next(k["key_id"] for k in (await client.get("/api/v1/keys")).json()["keys"] if k["label"] is None)
        assert await status_of(platform, first) == 200  # cached by the gateway from here on
        revoked = await client.delete(f"/api/v1/keys/{first_id}")
        assert revoked.status_code == 200, revoked.text
        assert await status_of(platform, first) == 401
        again = await client.delete(f"/api/v1/keys/{first_id}")  # revoking twice changes nothing
        assert again.status_code == 200

        rotated = await client.post(f"/api/v1/keys/{second_id}/rotate", json={})
        assert rotated.status_code == 201, rotated.text
        third = rotated.json()["key"]
    assert await status_of(platform, second) == 401
    async with platform.client(third) as client:
        listed = (await client.get("/api/v1/keys")).json()["keys"]
        assert [k["revoked_at"] is not None for k in listed] == [True, True, False]

    conn = await asyncpg.connect(platform.database_url)
    try:
        types = [
            r["type"]
            for r in await conn.fetch(
                "SELECT type FROM events WHERE stream_type = 'user' AND stream_id = (SELECT user_id FROM api_keys"
                " WHERE key_id = $1::uuid) ORDER BY version",
                first_id,
            )
        ]
    finally:
        await conn.close()
    assert types == [
        "UserRegistered.v1",
        "ApiKeyIssued.v1",
        "ApiKeyIssued.v1",
        "ApiKeyRevoked.v1",
        "ApiKeyIssued.v1",
        "ApiKeyRevoked.v1",
    ]


async def test_keys_are_their_owners_alone(platform: Platform) -> None:
    alice, bob = await platform.user_key(), await platform.user_key()
    bot = await platform.frontend_key("telegram", "tg-1")
    async with platform.client(alice) as a, platform.client(bob) as b:
        alice_key = (await a.get("/api/v1/keys")).json()["keys"][0]["key_id"]
        r = await b.delete(f"/api/v1/keys/{alice_key}")
        assert r.status_code == 404 and r.json()["code"] == "KEY_NOT_FOUND"
        r = await b.post(f"/api/v1/keys/{alice_key}/rotate", json={})
        assert r.status_code == 404 and r.json()["code"] == "KEY_NOT_FOUND"
        r = await a.delete("/api/v1/keys/not-a-key")
        assert r.status_code == 400 and r.json()["code"] == "INVALID_KEY_ID"
    async with platform.client(bot, **{"Tessera-User-Ref": "telegram:5"}) as client:
        r = await client.get("/api/v1/keys")
        assert r.status_code == 403 and r.json()["code"] == "USER_KEY_REQUIRED"
    assert await status_of(platform, alice) == 200


async def test_an_operator_revokes_and_rotates_a_bots_key(platform: Platform) -> None:
    key = await platform.frontend_key("discord", "dc-img-1")
    async with platform.client(key, **{"Tessera-User-Ref": "discord:9"}) as client:
        assert (await client.get("/api/v1/jobs")).status_code == 200  # cached now
    [row] = [r for r in await list_keys(platform.database_url) if r["bot_id"] == "dc-img-1"]
    fresh = await rotate_key(platform.nats_url, platform.database_url, row["key_id"])
    started = time.monotonic()
    async with platform.client(key, **{"Tessera-User-Ref": "discord:9"}) as client:
        while (await client.get("/api/v1/jobs")).status_code != 401:
            assert time.monotonic() - started < 2, "the revoked bot key still works"
            await asyncio.sleep(0.05)
    async with platform.client(fresh, **{"Tessera-User-Ref": "discord:9"}) as client:
        assert (await client.get("/api/v1/jobs")).status_code == 200
    [new_row] = [
        r for r in await list_keys(platform.database_url) if r["bot_id"] == "dc-img-1" and r["revoked_at"] is None
    ]
    assert await revoke_key(platform.nats_url, platform.database_url, new_row["key_id"]) == "frontend discord/dc-img-1"
    assert await status_of(platform, fresh) == 401
