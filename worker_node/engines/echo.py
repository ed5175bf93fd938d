"""Diagnostic engine: returns the prompt as a text artifact. For benchmarks and health checks."""

from __future__ import annotations

from worker_node.engines.base import JobContext, JobInput, Output


class EchoEngine:
    name = "echo"
    capabilities = ("echo",)
    models = ("echo",)
    slots = 256

    async def run(self, job: JobInput, ctx: JobContext) -> list[Output]:
        text = str(job.params.get("prompt", ""))
        return [Output(kind="text", format="txt", content_type="text/plain; charset=utf-8", text=text)]

    async def close(self) -> None:
        return None
