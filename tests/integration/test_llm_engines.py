"""The OpenAI-compatible and KoboldCPP adapters against fake servers that speak the real protocols:
streaming, usage, the servers' error shapes, dropped connections, and cancellation."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from scheduler.service import Scheduler
from tessera.embedded import free_port
from tests.conftest import Platform
from tests.fake_llm_servers import Recorder, kobold_app, openai_app, serve
from worker_node.engines.base import EngineError, JobContext, JobInput
from worker_node.engines.llm_http import KoboldEngine, OpenAIChatEngine, model_map
from worker_node.service import Worker


class Progress:
    def __init__(self) -> None:
        self.partials: list[str] = []

    async def __call__(self, fraction: float | None, message: str | None, partial: str | None) -> None:
        if partial is not None:
            self.partials.append(partial)


def job(prompt: str, model: str = "chat", **params: object) -> JobInput:
    return JobInput(job_id=uuid.uuid4(), attempt=1, capability="text", model=model, params={"prompt": prompt, **params})


def test_model_map_reads_the_operator_setting() -> None:
    assert model_map("chat=served-model, raw") == {"chat": "served-model", "raw": "raw"}


async def test_openai_streams_partial_text_and_reports_the_servers_token_count() -> None:
    recorder = Recorder()
    async with serve(openai_app(recorder)) as url:
        engine = OpenAIChatEngine(url, {"chat": "served-model"}, api_key="sk-test")
        progress = Progress()
        try:
            [output] = await engine.run(job("hello", system="be brief", temperature=0.2), JobContext(progress))
            [short] = await engine.run(job("hello", max_tokens=3), JobContext(Progress()))
        finally:
            await engine.close()
    assert output.text == "the answer is forty two" and output.usage == {"output_tokens": 5.0}
    assert short.text == "the answer is" and short.usage == {"output_tokens": 3.0}
    assert progress.partials and "the answer is forty two".startswith(progress.partials[0])
    sent = recorder.requests[0]
    assert sent["model"] == "served-model" and sent["stream"] is True and sent["max_tokens"] == 256
    assert sent["stream_options"] == {"include_usage": True} and sent["temperature"] == 0.2
    assert sent["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]


@pytest.mark.parametrize(
    ("prompt", "model", "code", "words"),
    [
        ("hello", "unknown", "ENGINE_REJECTED", "not found"),  # the server's own 404 message
        ("fail", "chat", "ENGINE_REJECTED", "context length exceeded"),
        ("drop", "chat", "ENGINE_DISCONNECTED", "dropped"),
    ],
)
async def test_openai_errors_say_what_the_server_said(prompt: str, model: str, code: str, words: str) -> None:
    async with serve(openai_app(Recorder())) as url:
        engine = OpenAIChatEngine(url, {"chat": "served-model", "unknown": "missing-model"})
        try:
            with pytest.raises(EngineError) as error:
                await engine.run(job(prompt, model), JobContext(Progress()))
        finally:
            await engine.close()
    assert error.value.code == code and words in error.value.message


async def test_an_unreachable_server_is_engine_unavailable() -> None:
    engine = OpenAIChatEngine(f"http://127.0.0.1:{free_port(None)}", {"chat": "served-model"})
    try:
        with pytest.raises(EngineError) as error:
            await engine.run(job("hello"), JobContext(Progress()))
    finally:
        await engine.close()
    assert error.value.code == "ENGINE_UNAVAILABLE"


async def test_cancelling_an_openai_job_disconnects_so_the_server_stops() -> None:
    recorder = Recorder()
    async with serve(openai_app(recorder)) as url:
        engine = OpenAIChatEngine(url, {"chat": "served-model"})
        progress = Progress()
        task = asyncio.create_task(engine.run(job("slow"), JobContext(progress)))
        await asyncio.sleep(0.7)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(50):
            if recorder.disconnected:
                break
            await asyncio.sleep(0.05)
        await engine.close()
    assert recorder.disconnected == 1 and progress.partials


async def test_kobold_streams_tokens_and_counts_them() -> None:
    recorder = Recorder()
    async with serve(kobold_app(recorder)) as url:
        engine = KoboldEngine(url, {"chat": "koboldcpp/fake-7b"})
        progress = Progress()
        try:
            assert await engine.loaded_model() == "koboldcpp/fake-7b"
            [output] = await engine.run(job("hello", max_tokens=4), JobContext(progress))
            [chat] = await engine.run(job("", messages=[{"role": "user", "content": "hi"}]), JobContext(Progress()))
        finally:
            await engine.close()
    assert output.text == "the answer is forty" and output.usage == {"output_tokens": 4.0}
    assert progress.partials and chat.text == "the answer is forty two"
    assert recorder.requests[0]["max_length"] == 4 and recorder.requests[0]["genkey"].startswith("tessera-")
    assert recorder.requests[1]["prompt"] == "User: hi\nAssistant:"


async def test_kobold_without_streaming_uses_the_blocking_api_and_counts_tokens() -> None:
    recorder = Recorder()
    async with serve(kobold_app(recorder)) as url:
        engine = KoboldEngine(url, {"chat": "koboldcpp/fake-7b"}, stream=False)
        try:
            [output] = await engine.run(job("hello", max_tokens=3), JobContext(Progress()))
            with pytest.raises(EngineError) as busy:
                await engine.run(job("fail"), JobContext(Progress()))
        finally:
            await engine.close()
    assert output.text == "the answer is" and output.usage == {"output_tokens": 3.0}
    assert busy.value.code == "ENGINE_ERROR" and "busy" in busy.value.message


async def test_kobold_errors_and_dropped_streams() -> None:
    async with serve(kobold_app(Recorder())) as url:
        engine = KoboldEngine(url, {"chat": "koboldcpp/fake-7b"})
        try:
            with pytest.raises(EngineError) as busy:
                await engine.run(job("fail"), JobContext(Progress()))
            with pytest.raises(EngineError) as dropped:
                await engine.run(job("drop"), JobContext(Progress()))
        finally:
            await engine.close()
    assert busy.value.code == "ENGINE_ERROR" and "busy" in busy.value.message
    assert dropped.value.code == "ENGINE_DISCONNECTED"


async def test_cancelling_a_kobold_job_aborts_its_generation() -> None:
    recorder = Recorder()
    async with serve(kobold_app(recorder)) as url:
        engine = KoboldEngine(url, {"chat": "koboldcpp/fake-7b"})
        task = asyncio.create_task(engine.run(job("slow"), JobContext(Progress())))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await engine.close()
    assert recorder.aborted == [recorder.requests[0]["genkey"]]


async def test_a_text_job_through_the_platform_is_charged_by_generated_tokens(platform_parts: Platform) -> None:
    """Submit over HTTP, run on an OpenAI-compatible server, charge what was generated."""
    scheduler = Scheduler(
        platform_parts.settings, nats_url=platform_parts.nats_url, database_url=platform_parts.database_url
    )
    await platform_parts.start("scheduler", scheduler)
    async with serve(openai_app(Recorder())) as url:
        worker = Worker(
            nats_url=platform_parts.nats_url,
            worker_id="llm",
            heartbeat_interval_s=0.3,
            engines=[OpenAIChatEngine(url, {"gemma3-270m": "served-model"})],
        )
        await platform_parts.start("worker:llm", worker)
        await asyncio.wait_for(worker.ready.wait(), 10)
        await asyncio.sleep(0.5)  # the scheduler hears of the worker
        key = await platform_parts.user_key(plan="free")
        async with platform_parts.client(key) as client:
            submitted = (
                await client.post(
                    "/api/v1/jobs", json={"capability": "text", "params": {"prompt": "What is the answer?"}}
                )
            ).json()
            assert submitted["cost_tokens"] == 0.04  # reserved: 0.01 + 0.1 x 256/1000, rounded up
            done = await platform_parts.wait_status(client, submitted["job_id"], {"COMPLETED"})
        await platform_parts.stop("worker:llm")
    assert done["artifacts"][0]["text"] == "the answer is forty two"
    assert done["cost_tokens"] == 0.02  # charged: 0.01 + 0.1 x 5/1000, rounded up
