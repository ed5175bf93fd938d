"""The ComfyUI adapter against a fake ComfyUI speaking its HTTP + websocket protocol."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from scheduler.service import Scheduler
from tests.conftest import Platform
from tests.fake_comfyui import ComfyState, comfyui_app
from tests.fake_llm_servers import serve
from worker_node.engines.base import EngineError, JobContext, JobInput
from worker_node.engines.comfyui import ComfyUIEngine, fill
from worker_node.service import Worker


class Progress:
    def __init__(self) -> None:
        self.fractions: list[float] = []

    async def __call__(self, fraction: float | None, message: str | None, partial: str | None) -> None:
        if fraction is not None:
            self.fractions.append(fraction)


def job(prompt: str, model: str = "sdxl", **params: object) -> JobInput:
    return JobInput(job_id=uuid.uuid4(), attempt=1, capability="image", model=model,
                    params={"prompt": prompt, **params})


async def test_a_prompt_runs_with_progress_and_returns_its_images() -> None:
    state = ComfyState()
    async with serve(comfyui_app(state)) as url:
        engine = ComfyUIEngine(url)
        progress = Progress()
        try:
            outputs = await engine.run(job("a lighthouse", width=1024, height=768, batch_size=2, seed=7,
                                           negative_prompt="blurry"), JobContext(progress))
            assert "sd_xl_base_1.0.safetensors" in await engine.checkpoints_available()
            assert await engine.vram() == {"vram_total": 85_000_000_000, "vram_free": 60_000_000_000}
        finally:
            await engine.close()
    assert len(outputs) == 2 and all(o.content_type == "image/png" for o in outputs)
    assert (outputs[0].width, outputs[0].height) == (16, 12)  # read from the PNG the fake rendered
    assert progress.fractions == sorted(progress.fractions) and progress.fractions[-1] == 1.0
    sent = state.prompts[0]
    assert sent["3"]["inputs"]["seed"] == 7 and sent["3"]["inputs"]["steps"] == 25
    assert sent["5"]["inputs"] == {"width": 1024, "height": 768, "batch_size": 2}
    assert sent["6"]["inputs"]["text"] == "a lighthouse" and sent["7"]["inputs"]["text"] == "blurry"
    assert sent["4"]["inputs"]["ckpt_name"] == "sd_xl_base_1.0.safetensors"


async def test_each_model_has_its_own_workflow() -> None:
    state = ComfyState()
    async with serve(comfyui_app(state)) as url:
        engine = ComfyUIEngine(url)
        assert engine.loaded == ()
        try:
            await engine.run(job("fast", model="flux-schnell"), JobContext(Progress()))
            await engine.run(job("slowly", model="flux-dev", cfg=2.5), JobContext(Progress()))
        finally:
            await engine.close()
    schnell, dev = state.prompts
    assert engine.loaded == ("flux-dev",)  # reported as the worker's loaded model, for affinity
    assert schnell["3"]["inputs"]["steps"] == 4 and schnell["5"]["class_type"] == "EmptySD3LatentImage"
    assert dev["10"]["inputs"]["guidance"] == 2.5 and dev["4"]["inputs"]["ckpt_name"] == "flux1-dev-fp8.safetensors"


async def test_video_renders_the_frames_its_duration_asks_for() -> None:
    state = ComfyState()
    async with serve(comfyui_app(state)) as url:
        engine = ComfyUIEngine(url)
        try:
            assert engine.capabilities == ("image", "video")
            [video] = await engine.run(JobInput(job_id=uuid.uuid4(), attempt=1, capability="video", model="ltx-video",
                                                params={"prompt": "waves", "duration_seconds": 5}),
                                       JobContext(Progress()))
        finally:
            await engine.close()
    sent = state.prompts[0]
    assert sent["6"]["inputs"] == {"width": 768, "height": 512, "length": 121, "batch_size": 1}  # 5 s at 24 fps
    assert sent["13"]["inputs"]["fps"] == 24 and sent["7"]["inputs"]["steps"] == 30
    assert video.kind == "video" and video.content_type == "image/webp" and video.data.startswith(b"RIFF")
    assert video.duration_seconds == video.usage["duration_seconds"] == round(121 / 24, 3)


@pytest.mark.parametrize(("prompt", "models", "code", "words"), [
    ("a cat", {"sdxl": "missing.safetensors"}, "ENGINE_REJECTED", "ckpt_name: 'missing.safetensors' not in list"),
    ("explode", None, "ENGINE_ERROR", "CUDA out of memory"),
    ("vanish", None, "ENGINE_DISCONNECTED", "closed the websocket"),
])
async def test_comfyui_failures_become_job_errors(prompt: str, models: dict[str, str] | None, code: str,
                                                  words: str) -> None:
    async with serve(comfyui_app(ComfyState())) as url:
        engine = ComfyUIEngine(url, models)
        try:
            with pytest.raises(EngineError) as error:
                await engine.run(job(prompt), JobContext(Progress()))
        finally:
            await engine.close()
    assert error.value.code == code and words in error.value.message


async def test_cancelling_interrupts_comfyui() -> None:
    state = ComfyState()
    async with serve(comfyui_app(state)) as url:
        engine = ComfyUIEngine(url)
        progress = Progress()
        task = asyncio.create_task(engine.run(job("slow"), JobContext(progress)))
        while len(progress.fractions) < 2:
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await engine.close()
    assert state.interrupts == 1


def test_templates_fill_typed_values_and_operators_add_their_own(tmp_path: Path) -> None:
    assert fill({"a": "{{width}}", "b": ["{{prompt}}", 1], "c": "x{{y}}"}, {"width": 512, "prompt": "p"}) == {
        "a": 512, "b": ["p", 1], "c": "x{{y}}"}
    with pytest.raises(EngineError, match="lora"):
        fill({"a": "{{lora}}"}, {})
    (tmp_path / "my-model.json").write_text(json.dumps({"1": {"class_type": "X", "inputs": {"t": "{{prompt}}"}}}))
    engine = ComfyUIEngine("http://127.0.0.1:1", {"my-model": "mine.safetensors"}, templates_dir=str(tmp_path))
    assert engine.workflow(job("hi", model="my-model")) == {"1": {"class_type": "X", "inputs": {"t": "hi"}}}
    with pytest.raises(ValueError, match="no ComfyUI workflow template"):
        ComfyUIEngine("http://127.0.0.1:1", {"unknown": "x"})


async def test_an_image_job_through_the_platform(platform_parts: Platform) -> None:
    """Submit over HTTP, render on (fake) ComfyUI, download the PNG with its real size."""
    await platform_parts.start("scheduler", Scheduler(platform_parts.settings, nats_url=platform_parts.nats_url,
                                                      database_url=platform_parts.database_url))
    async with serve(comfyui_app(ComfyState())) as url:
        worker = Worker(nats_url=platform_parts.nats_url, worker_id="gpu0", heartbeat_interval_s=0.3,
                        engines=[ComfyUIEngine(url)])
        await platform_parts.start("worker:gpu0", worker)
        await asyncio.wait_for(worker.ready.wait(), 10)
        await asyncio.sleep(0.5)  # the scheduler hears of the worker
        key = await platform_parts.user_key(plan="pro")
        async with platform_parts.client(key) as client:
            submitted = (await client.post("/api/v1/jobs", json={"capability": "image", "params": {
                "prompt": "a lighthouse at dusk", "width": 1280, "height": 768}})).json()
            assert submitted["cost_tokens"] == 0.94  # 1280 x 768 / 1024^2, rounded up
            done = await platform_parts.wait_status(client, submitted["job_id"], {"COMPLETED"})
            artifact = done["artifacts"][0]
            image = await client.get(artifact["url"])
        await platform_parts.stop("worker:gpu0")
    assert worker.loaded_models() == ["sdxl"]  # what the heartbeats now tell the scheduler
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert (artifact["width"], artifact["height"]) == (20, 12) and image.content.startswith(b"\x89PNG")
