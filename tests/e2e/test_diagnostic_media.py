"""Images and video with no GPU, through the whole platform: the diagnostic engines on a real worker,
and the product documents' request shape (`audio`, `params.resolution`, a top-level `model`)."""

from __future__ import annotations

import asyncio
import io

import httpx
import pytest
from PIL import Image

from scheduler.service import Scheduler
from tests.conftest import Platform


@pytest.fixture
async def media(platform_parts: Platform) -> Platform:
    """Gateway, projector, scheduler and a worker with the diagnostic engines and Piper, no ComfyUI."""
    scheduler = Scheduler(
        platform_parts.settings, nats_url=platform_parts.nats_url, database_url=platform_parts.database_url
    )
    await platform_parts.start("scheduler", scheduler)
    await asyncio.wait_for(scheduler.is_leader.wait(), 10)
    await platform_parts.start_worker("laptop", engines=("diagnostic-image", "diagnostic-video", "piper"))
    return platform_parts


async def completed(platform: Platform, client: httpx.AsyncClient, body: dict) -> dict:
    submitted = await client.post("/api/v1/jobs", json=body)
    assert submitted.status_code == 202, submitted.text
    return await platform.wait_status(client, submitted.json()["job_id"], {"COMPLETED", "FAILED"})


async def test_an_image_job_gives_pngs_of_the_asked_size_the_same_for_the_same_seed(media: Platform) -> None:
    key = await media.user_key(plan="free")
    async with media.client(key) as client:
        body = {
            "capability": "image",
            "params": {"prompt": "a lighthouse", "model": "diagnostic-image", "width": 512, "height": 384},
        }
        body["params"] |= {"batch_size": 2, "seed": 42}
        job = await completed(media, client, body)
        assert job["status"] == "COMPLETED", job["error"]
        assert job["cost_tokens"] == 0.01 and job["model"] == "diagnostic-image"
        pictures = []
        for artifact in job["artifacts"]:
            assert (artifact["content_type"], artifact["width"], artifact["height"]) == ("image/png", 512, 384)
            download = await client.get(artifact["url"])
            assert download.status_code == 200 and download.headers["content-type"] == "image/png"
            assert Image.open(io.BytesIO(download.content)).size == (512, 384)
            pictures.append(download.content)
        assert len(pictures) == 2 and pictures[0] != pictures[1]
        again = await completed(media, client, body)
        assert [(await client.get(a["url"])).content for a in again["artifacts"]] == pictures


async def test_a_video_job_gives_an_animated_webp_as_long_as_asked(media: Platform) -> None:
    key = await media.user_key(plan="free")
    async with media.client(key) as client:
        params = {"prompt": "waves", "model": "diagnostic-video", "duration_seconds": 3, "seed": 1}
        job = await completed(media, client, {"capability": "video", "params": params})
        assert job["status"] == "COMPLETED", job["error"]
        (artifact,) = job["artifacts"]
        assert (artifact["type"], artifact["content_type"], artifact["duration_seconds"]) == ("video", "image/webp", 3)
        assert (artifact["width"], artifact["height"]) == (768, 512)  # the catalog's default size
        video = Image.open(io.BytesIO((await client.get(artifact["url"])).content))
        assert video.size == (768, 512) and video.n_frames == 24


async def test_the_product_documents_request_shape_is_understood(media: Platform) -> None:
    key = await media.user_key()
    async with media.client(key) as client:
        speech = await completed(media, client, {"capability": "audio", "params": {"prompt": "hello"}})
        assert speech["status"] == "COMPLETED" and speech["capability"] == "tts" and speech["model"] == "piper-joe"
        assert speech["artifacts"][0]["content_type"] == "audio/wav"

        image = await completed(
            media,
            client,
            {"capability": "image", "model": "diagnostic-image", "params": {"prompt": "x", "resolution": "640x480"}},
        )
        assert image["status"] == "COMPLETED" and image["model"] == "diagnostic-image"
        assert image["params"] == {"prompt": "x", "model": "diagnostic-image", "width": 640, "height": 480}
        assert (image["artifacts"][0]["width"], image["artifacts"][0]["height"]) == (640, 480)


REFUSED = [  # (request, status, code)
    ({"capability": "image", "params": {"prompt": "x", "resolution": "huge"}}, 422, "INVALID_RESOLUTION"),
    ({"capability": "image", "params": {"prompt": "x", "resolution": [1024, 1024]}}, 422, "INVALID_RESOLUTION"),
    ({"capability": "audio", "params": {"prompt": "x", "resolution": "512x512"}}, 422, "INVALID_RESOLUTION"),
    (
        {"capability": "image", "params": {"prompt": "x", "resolution": "1024x1024", "width": 512}},
        422,
        "RESOLUTION_CONFLICT",
    ),
    ({"capability": "image", "params": {"prompt": "x", "resolution": "8x8"}}, 422, "VALIDATION_ERROR"),
    (
        {"capability": "image", "model": "diagnostic-image", "params": {"prompt": "x", "model": "sdxl"}},
        422,
        "MODEL_CONFLICT",
    ),
    ({"capability": "image", "model": 7, "params": {"prompt": "x"}}, 422, "VALIDATION_ERROR"),
    ({"capability": "audio", "model": "diagnostic-image", "params": {"prompt": "x"}}, 422, "UNKNOWN_MODEL"),
    # No model named: the capability's default (sdxl), which this fleet of diagnostic engines lacks.
    ({"capability": "image", "params": {"prompt": "x"}}, 503, "NO_CAPABLE_WORKER"),
]


async def test_a_request_shape_that_cannot_be_served_as_asked_is_refused_with_its_code(media: Platform) -> None:
    key = await media.user_key()
    async with media.client(key) as client:
        for body, status, code in REFUSED:
            refused = await client.post("/api/v1/jobs", json=body)
            assert (refused.status_code, refused.json()["code"]) == (status, code), (body, refused.text)
            assert refused.headers["content-type"] == "application/problem+json"
