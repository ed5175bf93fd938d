"""Run Tessera's ComfyUI adapter against a real ComfyUI on the CPU, with model-free workflows.

Not a test (CI has no ComfyUI): the same checks as tests/integration/test_comfyui_engine.py makes
against the fake, by hand, after record.py has been run once (it links the custom node):

    python tests/comfyui_transcripts/check_adapter.py --comfyui /work/comfyui --python /work/comfy-venv/bin/python
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parents[2]))

from tests.comfyui_transcripts.record import free_port, start_comfyui
from worker_node.engines.base import EngineError, JobContext, JobInput
from worker_node.engines.comfyui import ComfyUIEngine

PLAIN = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": "{{batch_size}}", "color": "{{seed}}"},
    },
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "tessera"}},
}
SLOWLY = {
    **PLAIN,
    "4": {
        "class_type": "TesseraSlowProgress",
        "inputs": {
            "image": ["2", 0],
            "steps": "{{steps}}",
            "seconds_per_step": 0.2,
            "preview": True,
            "fail": False,
            "seed": "{{seed}}",
        },
    },
    "3": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "tessera"}},
}


class Progress:
    def __init__(self) -> None:
        self.fractions: list[float] = []

    async def __call__(self, fraction: float | None, message: str | None, partial: str | None) -> None:
        if fraction is not None:
            self.fractions.append(fraction)


def job(model: str, seed: int, **params: Any) -> JobInput:
    return JobInput(
        job_id=uuid.uuid4(),
        attempt=1,
        capability="image",
        model=model,
        params={"prompt": "", "seed": seed, "width": 64, "height": 48, **params},
    )


def check(name: str, ok: bool, detail: Any = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name} {detail}")


async def until(condition: Any, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--comfyui", required=True)
    parser.add_argument("--python", required=True)
    parser.add_argument("--output", default="/tmp/comfyui-check-output")
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    templates = Path(tempfile.mkdtemp())
    (templates / "plain.json").write_text(json.dumps(PLAIN))
    (templates / "slowly.json").write_text(json.dumps(SLOWLY))
    log = open("/tmp/comfyui-check.log", "w")
    process = await start_comfyui(args, port, log)
    engine = ComfyUIEngine(url, {"plain": "", "slowly": ""}, templates_dir=str(templates), probe_timeout_s=2)
    http = httpx.AsyncClient(base_url=url)
    try:
        failures = []
        started = time.monotonic()
        for n in range(100):
            try:
                await engine.run(job("plain", n + 1), JobContext(Progress()))
            except EngineError as error:
                failures.append(error.message)
        check("100 fast jobs in a row", failures == [], f"{len(failures)} failed, {time.monotonic() - started:.1f}s")
        check("loaded after a success", engine.loaded == ("plain",), engine.loaded)

        progress = Progress()
        [image] = await engine.run(job("slowly", 7, steps=4), JobContext(progress))
        check("progress from a ProgressBar node", progress.fractions == [0.25, 0.5, 0.75, 1.0], progress.fractions)
        [again] = await engine.run(job("slowly", 7, steps=4), JobContext(Progress()))
        check("a cached prompt returns the same image", again.data == image.data)

        try:
            await engine.run(job("plain", 1, width=0), JobContext(Progress()))
            check("a validation error is refused", False)
        except EngineError as error:
            check(
                "a validation error names the node and input",
                error.code == "ENGINE_REJECTED" and "node 1 (EmptyImage)" in error.message and "width" in error.message,
                error.message,
            )

        # Another client's prompt runs; ours waits behind it and is cancelled.
        slow = dict(engine.workflow(job("slowly", 11, steps=15)))
        theirs = (await http.post("/prompt", json={"prompt": slow, "client_id": "someone-else"})).json()["prompt_id"]
        task = asyncio.create_task(engine.run(job("slowly", 12, steps=15), JobContext(Progress())))
        await asyncio.sleep(0.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        queue = (await http.get("/queue")).json()
        check(
            "cancelling a queued prompt removes it",
            queue["queue_pending"] == [] and [r[1] for r in queue["queue_running"]] == [theirs],
            queue["queue_pending"],
        )
        while (await http.get(f"/history/{theirs}")).json() == {}:
            await asyncio.sleep(0.2)
        status = (await http.get(f"/history/{theirs}")).json()[theirs]["status"]["status_str"]
        check("the other client's running prompt is untouched", status == "success", status)

        # Ours runs and is cancelled; the next in the queue runs.
        progress = Progress()
        task = asyncio.create_task(engine.run(job("slowly", 13, steps=15), JobContext(progress)))
        await until(lambda: len(progress.fractions) >= 2)
        after = (
            await http.post(
                "/prompt", json={"prompt": dict(engine.workflow(job("plain", 14))), "client_id": "someone-else"}
            )
        ).json()["prompt_id"]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(1.0)
        entry = (await http.get(f"/history/{after}")).json().get(after, {})
        check("cancelling a running prompt lets the next run", entry.get("status", {}).get("status_str") == "success")

        # Killed mid-prompt, without a close frame.
        progress = Progress()
        task = asyncio.create_task(engine.run(job("slowly", 15, steps=40), JobContext(progress)))
        await until(lambda: len(progress.fractions) >= 2)
        process.kill()
        process.wait()
        killed_at = time.monotonic()
        try:
            await asyncio.wait_for(task, 10)
            check("killed mid-prompt", False)
        except EngineError as error:
            check(
                "killed mid-prompt is ENGINE_DISCONNECTED",
                error.code == "ENGINE_DISCONNECTED",
                f"after {time.monotonic() - killed_at:.2f}s",
            )
        check("probe while down is False", await engine.probe() is False)
        try:
            await engine.run(job("plain", 16), JobContext(Progress()))
        except EngineError as error:
            check("a job while down is ENGINE_UNAVAILABLE", error.code == "ENGINE_UNAVAILABLE")
        process = await start_comfyui(args, port, log)
        check("probe after restart is True", await engine.probe() is True)
        # loaded was forgotten when it went down; a success brings it back, a restart forgets it again
        await engine.run(job("plain", 18), JobContext(Progress()))
        process.kill()
        process.wait()
        process = await start_comfyui(args, port, log)
        check(
            "a restart between probes forgets loaded",
            await engine.probe() is True and engine.loaded == (),
            engine.loaded,
        )
    finally:
        await http.aclose()
        await engine.close()
        process.terminate()
        process.wait()


if __name__ == "__main__":
    asyncio.run(main())
