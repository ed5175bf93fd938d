"""Signed, expiring artifact links over HTTP: a bot hands one to a chat whose people hold no key."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from gateway.client import TesseraClient
from gateway.links import LinkSigner
from tests.conftest import TEST_URL_SIGNING_KEY, Platform


async def two_artifacts(platform: Platform, key: str) -> list[dict]:
    async with platform.client(key) as client:
        jobs = []
        for prompt in ("first", "second"):
            submitted = await client.post("/api/v1/jobs", json={"capability": "tts", "params": {"prompt": prompt}})
            jobs.append(submitted.json()["job_id"])
        return [(await platform.wait_status(client, job, {"COMPLETED"}))["artifacts"][0] for job in jobs]


async def test_a_signed_link_downloads_without_a_key_until_it_expires(platform: Platform) -> None:
    key = await platform.user_key()
    first, second = await two_artifacts(platform, key)
    async with platform.client(key) as owner:
        with_key = (await owner.get(first["url"])).content
    assert first["signed_url"].startswith(first["url"] + "?") and first["signed_url_expires_at"]

    async with httpx.AsyncClient(timeout=30) as anyone:  # no key at all
        download = await anyone.get(first["signed_url"])
        assert download.status_code == 200, download.text
        assert download.content == with_key and download.headers["content-type"] == "audio/wav"

        unsigned = await anyone.get(first["url"])
        assert (unsigned.status_code, unsigned.json()["code"]) == (401, "UNAUTHENTICATED")

        query = first["signed_url"].split("?", 1)[1]
        other = await anyone.get(f"{second['url']}?{query}")  # the first's signature on the second
        assert (other.status_code, other.json()["code"]) == (403, "LINK_INVALID")

        expires, signature = (part.split("=", 1)[1] for part in query.split("&"))
        stretched = await anyone.get(first["url"], params={"expires": int(expires) + 86400, "signature": signature})
        assert (stretched.status_code, stretched.json()["code"]) == (403, "LINK_INVALID")

        forged = LinkSigner("not the deployment's secret", 3600).link(platform.api_url, uuid.UUID(first["id"]), None)
        refused = await anyone.get(forged[0])
        assert (refused.status_code, refused.json()["code"]) == (403, "LINK_INVALID")
        assert refused.headers["content-type"] == "application/problem+json"

        expired_url, _ = LinkSigner(TEST_URL_SIGNING_KEY, -1).link(platform.api_url, uuid.UUID(first["id"]), None)
        expired = await anyone.get(expired_url)
        assert (expired.status_code, expired.json()["code"]) == (403, "LINK_EXPIRED")

        # A genuine link to an artifact that does not exist says so, as the owner's key would.
        missing, _ = LinkSigner(TEST_URL_SIGNING_KEY, 60).link(platform.api_url, uuid.uuid4(), None)
        assert (await anyone.get(missing)).json()["code"] == "ARTIFACT_NOT_FOUND"


async def test_the_typed_client_shows_the_link(platform: Platform) -> None:
    key = await platform.user_key()
    async with TesseraClient(platform.api_url, key) as api:
        accepted = await api.submit("echo", {"prompt": "share me"})
        job = await api.job(accepted.job_id)
        for _ in range(200):
            if job.status == "COMPLETED":
                break
            await asyncio.sleep(0.05)
            job = await api.job(accepted.job_id)
        (artifact,) = job.artifacts
        assert artifact.signed_url is not None and artifact.signed_url_expires_at is not None
        assert artifact.expires_at is not None and artifact.signed_url_expires_at <= artifact.expires_at
    async with httpx.AsyncClient(timeout=30) as anyone:
        assert (await anyone.get(artifact.signed_url)).text == "share me"
