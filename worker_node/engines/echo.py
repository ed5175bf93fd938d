"""Diagnostic engine: returns the prompt as a text artifact. For benchmarks and health checks.

`params.delay_seconds` (0 to 60) makes it hold the job that long, reporting progress, so an
operator can watch a slow job move through the platform, or cancel one mid-run.
"""

from __future__ import annotations

import asyncio

from worker_node.engines.base import EngineError, JobContext, JobInput, Output

MAX_DELAY_S = 60.0


class EchoEngine:
    name = "echo"
    capabilities: tuple[str, ...] = ("echo",)
    models: tuple[str, ...] = ("echo",)
    slots = 256

    async def run(self, job: JobInput, ctx: JobContext) -> list[Output]:
        text = str(job.params.get("prompt", ""))
        delay = job.params.get("delay_seconds", 0)
        if not isinstance(delay, int | float) or not 0 <= delay <= MAX_DELAY_S:
            raise EngineError("INVALID_PARAMS", f"delay_seconds must be a number from 0 to {MAX_DELAY_S:.0f}")
        steps = int(delay * 4)
        for step in range(steps):
            await asyncio.sleep(delay / steps)
            await ctx.progress((step + 1) / steps, f"step {step + 1} of {steps}", None)
        return [Output(kind="text", format="txt", content_type="text/plain; charset=utf-8", text=text)]

    async def close(self) -> None:
        return None
