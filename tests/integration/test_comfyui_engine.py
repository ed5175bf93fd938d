"""The ComfyUI adapter against a fake ComfyUI written from recorded ComfyUI 0.8.0 transcripts."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect

from scheduler.service import Scheduler
from tests.conftest import Platform
from tests.fake_comfyui import FakeComfyUI
from worker_node.engines.base import EngineError, JobContext, JobInput
from worker_node.engines.comfyui import ComfyUIEngine, fill
from worker_node.service import Worker

TRANSCRIPTS = Path(__file__).parents[1] / "comfyui_transcripts"
# A workflow without a model, which any ComfyUI runs, even on a CPU.
PLAIN = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": "{{batch_size}}", "color": "{{seed}}"},
    },
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "tessera"}},
}


class Progress:
    def __init__(self) -> None:
        self.fractions: list[float] = []

    async def __call__(self, fraction: float | None, message: str | None, partial: str | None) -> None:
        if fraction is not None:
            self.fractions.append(fraction)


def job(prompt: str, model: str = "sdxl", **params: object) -> JobInput:
    return JobInput(
        job_id=uuid.uuid4(), attempt=1, capability="image", model=model, params={"prompt": prompt, **params}
    )


async def until(condition: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def queue_foreign_prompt(fake: FakeComfyUI, text: str = "slow") -> str:
    """Another client's prompt, queued with ComfyUI's own API, not through Tessera."""
    engine = ComfyUIEngine(fake.url)
    workflow = engine.workflow(job(text))
    await engine.close()
    async with httpx.AsyncClient(base_url=fake.url) as client:
        answer = await client.post("/prompt", json={"prompt": workflow, "client_id": "someone-else"})
    return str(answer.json()["prompt_id"])


async def test_a_prompt_runs_with_progress_and_returns_its_images() -> None:
    async with FakeComfyUI() as fake:
        engine = ComfyUIEngine(fake.url)
        progress = Progress()
        try:
            outputs = await engine.run(
                job("a lighthouse", width=1024, height=768, batch_size=2, seed=7, negative_prompt="blurry"),
                JobContext(progress),
            )
            assert "sd_xl_base_1.0.safetensors" in await engine.checkpoints_available()
            assert await engine.vram() == {"vram_total": 85_000_000_000, "vram_free": 60_000_000_000}
        finally:
            await engine.close()
    assert len(outputs) == 2 and all(o.content_type == "image/png" for o in outputs)
    assert (outputs[0].width, outputs[0].height) == (16, 12)  # read from the PNG the fake rendered
    assert progress.fractions == sorted(progress.fractions) and progress.fractions[-1] == 1.0
    sent = fake.prompts[0]
    assert sent["3"]["inputs"]["seed"] == 7 and sent["3"]["inputs"]["steps"] == 25
    assert sent["5"]["inputs"] == {"width": 1024, "height": 768, "batch_size": 2}
    assert sent["6"]["inputs"]["text"] == "a lighthouse" and sent["7"]["inputs"]["text"] == "blurry"
    assert sent["4"]["inputs"]["ckpt_name"] == "sd_xl_base_1.0.safetensors"


async def test_two_hundred_fast_jobs_in_a_row_never_fail_spuriously() -> None:
    """ComfyUI says execution_success before it writes /history: ending there loses the race."""
    async with FakeComfyUI(step_s=0.0, history_delay_s=0.01, previews=False) as fake:
        engine = ComfyUIEngine(fake.url)
        failures: list[str] = []
        try:
            for n in range(200):
                try:
                    [image] = await engine.run(
                        job(f"quick {n}", model="flux-schnell", width=64, height=64), JobContext(Progress())
                    )
                    assert image.data is not None and image.data.startswith(b"\x89PNG")
                except EngineError as error:
                    failures.append(error.message)
        finally:
            await engine.close()
    assert failures == []
    assert len(fake.finished) == 200 and set(fake.finished.values()) == {"success"}


async def test_a_missed_end_of_prompt_still_finds_the_outputs_in_history() -> None:
    async with FakeComfyUI(history_delay_s=0.3, send_final_executing=False) as fake:
        engine = ComfyUIEngine(fake.url)
        try:
            [image] = await engine.run(job("a cat"), JobContext(Progress()))
        finally:
            await engine.close()
    assert image.content_type == "image/png"


async def test_the_same_workflow_again_is_served_from_comfyuis_cache() -> None:
    async with FakeComfyUI() as fake:
        engine = ComfyUIEngine(fake.url)
        first, again = Progress(), Progress()
        try:
            [one] = await engine.run(job("a cat", seed=3), JobContext(first))
            [two] = await engine.run(job("a cat", seed=3), JobContext(again))
        finally:
            await engine.close()
    assert first.fractions and again.fractions == []  # cached: no node ran, no progress
    assert one.data == two.data


async def test_each_model_has_its_own_workflow() -> None:
    async with FakeComfyUI() as fake:
        engine = ComfyUIEngine(fake.url)
        assert engine.loaded == ()
        try:
            await engine.run(job("fast", model="flux-schnell"), JobContext(Progress()))
            await engine.run(job("slowly", model="flux-dev", cfg=2.5), JobContext(Progress()))
        finally:
            await engine.close()
    schnell, dev = fake.prompts
    assert engine.loaded == ("flux-dev",)  # reported as the worker's loaded model, for affinity
    assert schnell["3"]["inputs"]["steps"] == 4 and schnell["5"]["class_type"] == "EmptySD3LatentImage"
    assert dev["10"]["inputs"]["guidance"] == 2.5 and dev["4"]["inputs"]["ckpt_name"] == "flux1-dev-fp8.safetensors"


async def test_video_renders_the_frames_its_duration_asks_for() -> None:
    async with FakeComfyUI() as fake:
        engine = ComfyUIEngine(fake.url)
        try:
            assert engine.capabilities == ("image", "video")
            [video] = await engine.run(
                JobInput(
                    job_id=uuid.uuid4(),
                    attempt=1,
                    capability="video",
                    model="ltx-video",
                    params={"prompt": "waves", "duration_seconds": 5},
                ),
                JobContext(Progress()),
            )
        finally:
            await engine.close()
    sent = fake.prompts[0]
    assert sent["6"]["inputs"] == {"width": 768, "height": 512, "length": 121, "batch_size": 1}  # 5 s at 24 fps
    assert sent["13"]["inputs"]["fps"] == 24 and sent["7"]["inputs"]["steps"] == 30
    assert video.kind == "video" and video.content_type == "image/webp" and video.data.startswith(b"RIFF")
    assert video.duration_seconds == video.usage["duration_seconds"] == round(121 / 24, 3)


@pytest.mark.parametrize(
    ("prompt", "models", "code", "words"),
    [
        (
            "a cat",
            {"sdxl": "missing.safetensors"},
            "ENGINE_REJECTED",
            "Prompt outputs failed validation; node 4 (CheckpointLoaderSimple): Value not in list: "
            "ckpt_name: 'missing.safetensors' not in",
        ),
        ("explode", None, "ENGINE_ERROR", "ComfyUI node 3 (KSampler): torch.OutOfMemoryError: CUDA out of memory"),
        ("vanish", None, "ENGINE_DISCONNECTED", "dropped the websocket"),
    ],
)
async def test_comfyui_failures_become_job_errors(
    prompt: str, models: dict[str, str] | None, code: str, words: str
) -> None:
    async with FakeComfyUI() as fake:
        engine = ComfyUIEngine(fake.url, models)
        try:
            with pytest.raises(EngineError) as error:
                await asyncio.wait_for(engine.run(job(prompt), JobContext(Progress())), 10)
        finally:
            await engine.close()
    assert error.value.code == code and words in error.value.message


async def test_a_refused_workflow_names_comfyuis_reason(tmp_path: Path) -> None:
    (tmp_path / "odd.json").write_text(
        json.dumps(
            {
                "1": {"class_type": "NoSuchNode", "inputs": {"text": "{{prompt}}"}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
            }
        )
    )
    async with FakeComfyUI() as fake:
        engine = ComfyUIEngine(fake.url, {"odd": ""}, templates_dir=str(tmp_path))
        try:
            with pytest.raises(EngineError) as error:
                await engine.run(job("hi", model="odd"), JobContext(Progress()))
        finally:
            await engine.close()
    assert error.value.code == "ENGINE_REJECTED"
    assert "Cannot execute because node NoSuchNode does not exist.: Node ID '#1'" in error.value.message


async def test_cancelling_a_queued_prompt_removes_it_and_leaves_the_running_one_alone() -> None:
    async with FakeComfyUI() as fake:
        theirs = await queue_foreign_prompt(fake)  # runs until someone interrupts it
        await until(lambda: theirs in fake.started)
        engine = ComfyUIEngine(fake.url)
        task = asyncio.create_task(engine.run(job("a cat"), JobContext(Progress())))
        await until(lambda: len(fake.accepted) == 2)
        ours = fake.accepted[1]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with httpx.AsyncClient(base_url=fake.url) as client:
            queue = (await client.get("/queue")).json()
        await engine.close()
        assert queue["queue_pending"] == [] and queue["queue_running"][0][1] == theirs
        assert fake.interrupts == [ours]  # prompt-scoped, and ComfyUI skips it: ours is not running
        assert theirs not in fake.finished and ours not in fake.started


async def test_cancelling_a_running_prompt_stops_it_and_the_next_one_runs() -> None:
    async with FakeComfyUI() as fake:
        engine = ComfyUIEngine(fake.url)
        progress = Progress()
        task = asyncio.create_task(engine.run(job("slow"), JobContext(progress)))
        await until(lambda: len(progress.fractions) >= 2)
        theirs = await queue_foreign_prompt(fake, "a dog")
        ours = fake.accepted[0]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: theirs in fake.finished)
        await engine.close()
    assert fake.finished == {ours: "interrupted", theirs: "success"}
    assert fake.interrupts == [ours]


async def test_a_cancel_racing_the_prompt_submission_leaves_no_orphan() -> None:
    async with FakeComfyUI() as fake:
        theirs = await queue_foreign_prompt(fake)
        await until(lambda: theirs in fake.started)
        fake.accept_delay_s = 0.3  # /prompt is still validating when the job is cancelled
        engine = ComfyUIEngine(fake.url)
        task = asyncio.create_task(engine.run(job("a cat"), JobContext(Progress())))
        await until(lambda: fake.posts == 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: len(fake.accepted) == 2)  # ComfyUI did queue it, after the cancel
        ours = fake.accepted[1]
        async with httpx.AsyncClient(base_url=fake.url) as client:
            assert (await client.get("/queue")).json()["queue_pending"] == []
            await client.post("/interrupt", json={"prompt_id": theirs})  # let theirs end: would ours run next?
        await until(lambda: theirs in fake.finished)
        await asyncio.sleep(0.2)
        await engine.close()
    assert ours not in fake.started and fake.finished == {theirs: "interrupted"}


async def test_a_comfyui_killed_mid_prompt_disconnects_the_job_and_fails_the_probe() -> None:
    async with FakeComfyUI() as fake:
        engine = ComfyUIEngine(fake.url, probe_timeout_s=1.0)
        progress = Progress()
        try:
            assert await engine.probe() is True
            task = asyncio.create_task(engine.run(job("slow"), JobContext(progress)))
            await until(lambda: len(progress.fractions) >= 2)
            await fake.kill()  # no close frame, as SIGKILL
            with pytest.raises(EngineError) as error:
                await asyncio.wait_for(task, 5)
            assert error.value.code == "ENGINE_DISCONNECTED"
            assert await engine.probe() is False
            await fake.start()
            assert await engine.probe() is True
            [image] = await engine.run(job("a cat"), JobContext(Progress()))
            assert image.content_type == "image/png"
        finally:
            await engine.close()


async def test_a_hung_comfyui_is_found_out_by_the_websocket_keepalive() -> None:
    async with FakeComfyUI() as fake:
        engine = ComfyUIEngine(fake.url, ws_ping_s=0.5, probe_timeout_s=0.5)
        progress = Progress()
        try:
            task = asyncio.create_task(engine.run(job("slow"), JobContext(progress)))
            await until(lambda: len(progress.fractions) >= 2)
            await fake.freeze()  # the connection stays open and says nothing, not even a pong
            with pytest.raises(EngineError) as error:
                await asyncio.wait_for(task, 5)
            assert error.value.code == "ENGINE_DISCONNECTED"
            assert await engine.probe() is False
        finally:
            await engine.close()


async def test_an_unreachable_comfyui_is_unavailable() -> None:
    async with FakeComfyUI() as fake:
        url = fake.url
    engine = ComfyUIEngine(url, probe_timeout_s=0.5)
    try:
        with pytest.raises(EngineError) as error:
            await engine.run(job("a cat"), JobContext(Progress()))
        assert error.value.code == "ENGINE_UNAVAILABLE"
        assert await engine.probe() is False
    finally:
        await engine.close()


async def test_loaded_comes_only_from_a_success_and_is_forgotten_when_comfyui_restarts() -> None:
    async with FakeComfyUI() as fake:
        engine = ComfyUIEngine(fake.url)
        try:
            with pytest.raises(EngineError):
                await engine.run(job("explode"), JobContext(Progress()))  # accepted by /prompt, then fails
            assert engine.loaded == ()
            await engine.run(job("a cat", model="flux-schnell"), JobContext(Progress()))
            assert engine.loaded == ("flux-schnell",)
            with pytest.raises(EngineError):
                await engine.run(job("explode"), JobContext(Progress()))
            assert engine.loaded == ("flux-schnell",)  # a failure loads nothing new
            await fake.kill()
            await fake.start()  # back before any probe saw it gone
            assert await engine.probe() is True
            assert engine.loaded == ()
        finally:
            await engine.close()


def test_templates_fill_typed_values_and_operators_add_their_own(tmp_path: Path) -> None:
    assert fill({"a": "{{width}}", "b": ["{{prompt}}", 1], "c": "x{{y}}"}, {"width": 512, "prompt": "p"}) == {
        "a": 512,
        "b": ["p", 1],
        "c": "x{{y}}",
    }
    with pytest.raises(EngineError, match="lora"):
        fill({"a": "{{lora}}"}, {})
    (tmp_path / "my-model.json").write_text(json.dumps({"1": {"class_type": "X", "inputs": {"t": "{{prompt}}"}}}))
    engine = ComfyUIEngine("http://127.0.0.1:1", {"my-model": "mine.safetensors"}, templates_dir=str(tmp_path))
    assert engine.models == ("my-model",)
    assert engine.workflow(job("hi", model="my-model")) == {"1": {"class_type": "X", "inputs": {"t": "hi"}}}
    with pytest.raises(ValueError, match="no ComfyUI workflow template"):
        ComfyUIEngine("http://127.0.0.1:1", {"unknown": "x"})


def test_an_operator_template_is_a_model_of_its_own_without_a_model_list(tmp_path: Path) -> None:
    (tmp_path / "my-anime.json").write_text(
        json.dumps(
            {
                "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "anime.safetensors"}},
                "9": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "{{prompt}}"}},
            }
        )
    )
    (tmp_path / "my-clip.json").write_text(
        json.dumps({"1": {"class_type": "SaveAnimatedWEBP", "inputs": {"fps": "{{fps}}"}}})
    )
    engine = ComfyUIEngine("http://127.0.0.1:1", templates_dir=str(tmp_path))
    assert set(engine.models) == {"sdxl", "flux-schnell", "flux-dev", "ltx-video", "my-anime", "my-clip"}
    assert engine.video_models == {"ltx-video", "my-clip"}
    (tmp_path / "my-other.json").write_text(
        json.dumps({"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "{{checkpoint}}"}}})
    )
    with pytest.raises(ValueError, match="my-other=<file>"):
        ComfyUIEngine("http://127.0.0.1:1", templates_dir=str(tmp_path))
    explicit = ComfyUIEngine("http://127.0.0.1:1", {"my-other": "other.safetensors"}, templates_dir=str(tmp_path))
    assert explicit.models == ("my-other",)  # a model list is the whole list


# --- the same assertions against the fake and, when COMFYUI_URL is set, a real ComfyUI ----------


@pytest.fixture(params=["fake", "real"])
async def comfyui_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    if request.param == "real":
        url = os.environ.get("COMFYUI_URL")
        if not url:
            pytest.skip("set COMFYUI_URL to check a real ComfyUI too")
        yield url
        return
    async with FakeComfyUI(step_s=0.0, previews=False) as fake:
        yield fake.url


async def test_model_free_workflows_run_back_to_back_and_refusals_name_the_input(
    comfyui_url: str, tmp_path: Path
) -> None:
    (tmp_path / "plain.json").write_text(json.dumps(PLAIN))
    engine = ComfyUIEngine(comfyui_url, {"plain": ""}, templates_dir=str(tmp_path))
    seed = uuid.uuid4().int % 0xFFF000  # EmptyImage's color: a new one per run, so nothing is cached
    try:
        assert await engine.probe() is True
        for n in range(50):
            [image] = await engine.run(
                job("", model="plain", seed=seed + n, width=64, height=48), JobContext(Progress())
            )
            assert image.data is not None and image.data.startswith(b"\x89PNG")
        assert engine.loaded == ("plain",)
        with pytest.raises(EngineError) as error:
            await engine.run(job("", model="plain", seed=seed, width=0, height=48), JobContext(Progress()))
        assert error.value.code == "ENGINE_REJECTED"
        assert "node 1 (EmptyImage): Value 0 smaller than min of 1: width" in error.value.message
        assert engine.loaded == ("plain",)
    finally:
        await engine.close()


# --- the fake against the recording -----------------------------------------------------------


def shape(events: list[dict[str, Any]], prompt_id: str) -> list[str]:
    """What a client heard about one prompt: message types in order, nodes named, frames by type."""
    heard: list[str] = []
    for event in events:
        if event["kind"] == "binary":
            heard.append(f"binary:{event['event_type']}")
            continue
        kind, data = event["message"]["type"], event["message"]["data"]
        if data.get("prompt_id") != prompt_id or kind == "progress_state":  # progress_state: how often varies
            continue
        if kind in ("executing", "executed"):
            kind += f":{data['node']}"
        elif kind == "progress":
            kind += f":{data['value']}/{data['max']}"
        heard.append(kind)
    return heard


def recorded(scenario: str, client: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The recorded websocket events of one client and the prompts it posted, from a transcript."""
    transcript = json.loads((TRANSCRIPTS / f"{scenario}.json").read_text())
    assert transcript["comfyui_version"] == "0.8.0"
    events = [e for e in transcript["events"] if e["channel"] == f"ws:{client}" and e["kind"] in ("text", "binary")]
    posts = [
        e
        for e in transcript["events"]
        if e["channel"] == "http"
        and e["path"] == "/prompt"
        and e["status"] == 200
        and e["body"]["client_id"].startswith(client)
    ]
    return events, posts


async def replay(fake: FakeComfyUI, workflow: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    client_id = uuid.uuid4().hex
    events: list[dict[str, Any]] = []
    async with connect(fake.url.replace("http", "ws", 1) + f"/ws?clientId={client_id}") as ws:
        async with httpx.AsyncClient(base_url=fake.url) as client:
            prompt_id = (await client.post("/prompt", json={"prompt": workflow, "client_id": client_id})).json()[
                "prompt_id"
            ]
        async for raw in ws:
            if isinstance(raw, bytes):
                events.append({"kind": "binary", "event_type": struct.unpack(">I", raw[:4])[0]})
                continue
            message = json.loads(raw)
            events.append({"kind": "text", "message": message})
            if message["type"] == "executing" and message["data"].get("node") is None:
                break
    return events, str(prompt_id)


@pytest.mark.parametrize(("scenario", "client"), [("basic", "a"), ("progress", "legacy"), ("execution_error", "a")])
async def test_the_fake_says_what_the_recorded_comfyui_said(scenario: str, client: str) -> None:
    events, posts = recorded(scenario, client)
    async with FakeComfyUI(step_s=0.0) as fake:
        for post in posts:
            prompt_id = post["answer"]["prompt_id"]
            heard, ours = await replay(fake, post["body"]["prompt"])
            assert shape(heard, ours) == shape(events, prompt_id)


async def test_the_fake_refuses_as_the_recorded_comfyui_refused() -> None:
    transcript = json.loads((TRANSCRIPTS / "validation_errors.json").read_text())
    async with FakeComfyUI() as fake, httpx.AsyncClient(base_url=fake.url) as client:
        for exchange in transcript["events"][1:]:  # the first needs ComfyUI's input schemas, which the fake lacks
            answer = await client.post("/prompt", json=exchange["body"])
            assert (answer.status_code, answer.json()) == (exchange["status"], exchange["answer"])


async def test_an_image_job_through_the_platform(platform_parts: Platform) -> None:
    """Submit over HTTP, render on (fake) ComfyUI, download the PNG with its real size."""
    await platform_parts.start(
        "scheduler",
        Scheduler(platform_parts.settings, nats_url=platform_parts.nats_url, database_url=platform_parts.database_url),
    )
    async with FakeComfyUI() as fake:
        worker = Worker(
            nats_url=platform_parts.nats_url,
            worker_id="gpu0",
            heartbeat_interval_s=0.3,
            engines=[ComfyUIEngine(fake.url)],
        )
        await platform_parts.start("worker:gpu0", worker)
        await asyncio.wait_for(worker.ready.wait(), 10)
        await asyncio.sleep(0.5)  # the scheduler hears of the worker
        key = await platform_parts.user_key(plan="pro")
        async with platform_parts.client(key) as client:
            submitted = (
                await client.post(
                    "/api/v1/jobs",
                    json={
                        "capability": "image",
                        "params": {"prompt": "a lighthouse at dusk", "width": 1280, "height": 768},
                    },
                )
            ).json()
            assert submitted["cost_tokens"] == 0.94  # 1280 x 768 / 1024^2, rounded up
            done = await platform_parts.wait_status(client, submitted["job_id"], {"COMPLETED"})
            artifact = done["artifacts"][0]
            image = await client.get(artifact["url"])
        await platform_parts.stop("worker:gpu0")
    assert worker.loaded_models() == ["sdxl"]  # what the heartbeats now tell the scheduler
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert (artifact["width"], artifact["height"]) == (20, 12) and image.content.startswith(b"\x89PNG")


async def test_comfyui_down_withdraws_its_models_requeues_the_job_and_recovers(platform_parts: Platform) -> None:
    """ComfyUI dies mid-prompt (no close frame): the job is requeued, not failed; the worker stops
    offering sdxl, so a new image job is refused at admission; ComfyUI comes back, the model is
    offered again and the requeued job completes on its second attempt."""
    scheduler = Scheduler(
        platform_parts.settings, nats_url=platform_parts.nats_url, database_url=platform_parts.database_url
    )
    await platform_parts.start("scheduler", scheduler)
    async with FakeComfyUI(step_s=0.2) as fake:
        worker = Worker(
            nats_url=platform_parts.nats_url,
            worker_id="gpu-flaky",
            heartbeat_interval_s=0.3,
            engines=[ComfyUIEngine(fake.url, {"sdxl": "sd_xl_base_1.0.safetensors"})],
        )
        await platform_parts.start("worker:gpu-flaky", worker)
        await asyncio.wait_for(worker.ready.wait(), 10)

        def offered() -> list[str]:
            view = scheduler.state.workers.get("gpu-flaky") if scheduler.state else None
            return view.status.models if view else []

        async def until(condition, what: str) -> None:  # type: ignore[no-untyped-def]
            for _ in range(300):
                if condition():
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"timed out waiting for {what}")

        await until(lambda: "sdxl" in offered(), "the worker's announcement")
        key = await platform_parts.user_key(plan="pro")
        async with platform_parts.client(key) as client:
            job_id = (
                await client.post(
                    "/api/v1/jobs", json={"capability": "image", "params": {"prompt": "a lighthouse", "steps": 20}}
                )
            ).json()["job_id"]
            await until(lambda: bool(fake.started), "the prompt to run")
            await fake.kill()
            await platform_parts.wait_status(client, job_id, {"QUEUED"}, timeout=15)
            await until(lambda: "sdxl" not in offered(), "sdxl to be withdrawn")
            refused = await client.post("/api/v1/jobs", json={"capability": "image", "params": {"prompt": "x"}})
            assert refused.status_code == 503 and refused.json()["code"] == "NO_CAPABLE_WORKER"

            fake.step_s = 0.005
            await fake.start()
            await until(lambda: "sdxl" in offered(), "sdxl to be offered again")
            done = await platform_parts.wait_status(client, job_id, {"COMPLETED"}, timeout=20)
        await platform_parts.stop("worker:gpu-flaky")
    assert done["attempt"] == 2 and done["artifacts"][0]["content_type"] == "image/png"
    events = await histories_of(platform_parts.database_url, job_id)
    assert events.count("JobRequeued.v1") == 1 and "JobFailed.v1" not in events


async def histories_of(database_url: str, job_id: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        return [
            r["type"]
            for r in await conn.fetch("SELECT type FROM events WHERE stream_id = $1::uuid ORDER BY version", job_id)
        ]
    finally:
        await conn.close()
