"""The engine interface: one coroutine that turns a job's input into outputs.

Cancellation is asyncio cancellation: when a job is cancelled the worker cancels the task
running `Engine.run`, and an engine that holds remote work (a ComfyUI prompt, an LLM stream)
interrupts it in its `except CancelledError` before re-raising. An engine that computes for long
on the worker's CPU (PocketSphinx, llama.cpp) does it in an `EngineProcess` (process.py), not in
a thread: C code that holds the GIL would stop the worker's heartbeats, and a thread cannot be
stopped when its job is cancelled, while a process can.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class EngineError(Exception):
    """The engine could not produce the job's output; `code` is stable, `message` for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class JobInput:
    job_id: uuid.UUID
    attempt: int
    capability: str
    model: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Output:
    """One artifact. `text` for small text outputs, `data` for anything else."""

    kind: str  # image | video | audio | text
    format: str
    content_type: str
    data: bytes | None = None
    text: str | None = None
    width: int | None = None
    height: int | None = None
    duration_seconds: float | None = None
    # What the price depends on, as measured by the engine (output_tokens, audio_seconds, ...);
    # the scheduler charges by it, never more than it reserved.
    usage: dict[str, float] = field(default_factory=dict)


ProgressFn = Callable[[float | None, str | None, str | None], Awaitable[None]]


FetchFn = Callable[[str], Awaitable[bytes]]


async def _no_inputs(name: str) -> bytes:
    raise EngineError("INPUT_UNAVAILABLE", f"this worker cannot read input {name!r}")


@dataclass(frozen=True)
class JobContext:
    progress: ProgressFn  # (fraction, message, partial text)
    fetch: FetchFn = _no_inputs  # the bytes of an input named by params.input.object


async def read_input(job: JobInput, ctx: JobContext) -> tuple[bytes, str]:
    """The job's input file and its content type; EngineError when the job has none."""
    reference = job.params.get("input")
    if not isinstance(reference, dict) or not isinstance(reference.get("object"), str):
        raise EngineError("INPUT_REQUIRED", f"{job.capability} needs an input file (params.input_upload)")
    return await ctx.fetch(reference["object"]), str(reference.get("content_type") or "application/octet-stream")


class Engine(Protocol):
    """What the worker needs of a backend. Every built-in engine satisfies it (mypy checks this in
    `worker_node.engines.build`); two optional abilities are protocols of their own below."""

    name: str
    capabilities: tuple[str, ...]
    models: tuple[str, ...]
    slots: int  # how many jobs it runs at once by default

    async def run(self, job: JobInput, ctx: JobContext) -> list[Output]: ...

    async def close(self) -> None: ...


@runtime_checkable
class Probed(Protocol):
    """An engine behind a server that can go away: the worker asks it every heartbeat interval and
    withdraws its models while it does not answer."""

    async def probe(self) -> bool: ...


@runtime_checkable
class Swapping(Protocol):
    """An engine that holds only some of its models ready at a time (a GPU engine that swaps
    checkpoints). Engines without `loaded` are taken to hold all their models."""

    @property
    def loaded(self) -> tuple[str, ...]: ...
