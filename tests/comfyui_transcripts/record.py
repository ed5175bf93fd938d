"""Record what a real ComfyUI says, in order, so tests/fake_comfyui.py can be checked against it.

Not a test: run by hand against a ComfyUI checkout on the CPU (no model is needed). It starts
ComfyUI itself, so that it can kill it the way a crash does:

    python tests/comfyui_transcripts/record.py --comfyui /work/comfyui --python /work/comfy-venv/bin/python

Each scenario becomes `<scenario>.json` beside this file: the websocket messages each client
received (text as JSON; binary frames as their event type, image type or metadata, and size) and
every HTTP exchange, in the order they happened. `custom_nodes/tessera_slow_progress.py` is linked
into ComfyUI's custom_nodes first: it reports progress through `comfy.utils.ProgressBar`, as
KSampler does, so progress, progress_state and preview frames are recorded without a model.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

HERE = Path(__file__).parent
NODE = HERE / "custom_nodes" / "tessera_slow_progress.py"


def image_workflow(seed: int, *, slow: dict[str, Any] | None = None) -> dict[str, Any]:
    """EmptyImage -> ImageInvert [-> TesseraSlowProgress] -> SaveImage: a workflow with no model."""
    workflow: dict[str, Any] = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": seed % 0xFFFFFF},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "tessera"}},
    }
    if slow is not None:
        workflow["4"] = {
            "class_type": "TesseraSlowProgress",
            "inputs": {
                "image": ["2", 0],
                "steps": 4,
                "seconds_per_step": 0.2,
                "preview": True,
                "fail": False,
                "seed": seed,
                **slow,
            },
        }
        workflow["3"]["inputs"]["images"] = ["4", 0]
    return workflow


class Transcript:
    """The events of one scenario, in the order this process saw them."""

    def __init__(self, name: str, description: str) -> None:
        self.name, self.description = name, description
        self.events: list[dict[str, Any]] = []
        self.started = time.monotonic()

    def add(self, channel: str, **entry: Any) -> dict[str, Any]:
        event = {"t": round(time.monotonic() - self.started, 3), "channel": channel, **entry}
        self.events.append(event)
        return event

    def save(self, version: str) -> None:
        path = HERE / f"{self.name}.json"
        path.write_text(
            json.dumps(
                {
                    "comfyui_version": version,
                    "scenario": self.name,
                    "description": self.description,
                    "events": self.events,
                },
                indent=1,
            )
            + "\n"
        )
        print(f"wrote {path.name}: {len(self.events)} events")


class Client:
    """One websocket client (`clientId`), recording everything it receives."""

    def __init__(self, base_url: str, name: str, transcript: Transcript, *, preview_metadata: bool = False) -> None:
        self.id = f"{name}-{uuid.uuid4().hex[:8]}"
        self.name, self.transcript = name, transcript
        self.url = base_url.replace("http", "ws", 1) + f"/ws?clientId={self.id}"
        self.preview_metadata = preview_metadata
        self.messages: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.ws: ClientConnection | None = None

    async def start(self) -> None:
        self.ws = await connect(self.url, max_size=None)
        if self.preview_metadata:  # as ComfyUI's frontend does: its first message
            await self.ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        self.task = asyncio.create_task(self._listen(self.ws))

    async def _listen(self, ws: ClientConnection) -> None:
        channel = f"ws:{self.name}"
        try:
            async for raw in ws:
                if isinstance(raw, bytes):
                    self.transcript.add(channel, kind="binary", **describe_binary(raw))
                else:
                    message = json.loads(raw)
                    self.messages.append(message)
                    self.transcript.add(channel, kind="text", message=message)
                self.changed.set()
            self.transcript.add(channel, kind="closed", close_code=ws.close_code, close_frame_received=True)
        except ConnectionClosed as exc:
            self.transcript.add(
                channel,
                kind="closed",
                exception=type(exc).__name__,
                close_code=ws.close_code,
                close_frame_received=exc.rcvd is not None,
                text=str(exc),
            )
        self.changed.set()

    async def wait_for(self, kind: str, prompt_id: str, timeout: float = 60, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages:
                data = message.get("data") or {}
                if (
                    message.get("type") == kind
                    and data.get("prompt_id") == prompt_id
                    and all(data.get(k) == v for k, v in match.items())
                ):
                    return message
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no {kind} {match} for {prompt_id}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)

    async def wait_done(self, prompt_id: str) -> None:
        await self.wait_for("executing", prompt_id, node=None)

    async def stop(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.task is not None:
            await self.task


def describe_binary(raw: bytes) -> dict[str, Any]:
    """A binary frame without its pixels: ComfyUI's event type, then what the event carries."""
    event_type = struct.unpack(">I", raw[:4])[0]
    described: dict[str, Any] = {"event_type": event_type, "size": len(raw)}
    if event_type == 1:  # PREVIEW_IMAGE: a 4-byte image type (1 JPEG, 2 PNG), then the image
        described["image_type"] = struct.unpack(">I", raw[4:8])[0]
        described["image_magic"] = raw[8:12].hex()
    elif event_type == 4:  # PREVIEW_IMAGE_WITH_METADATA: a 4-byte length, that much JSON, then the image
        length = struct.unpack(">I", raw[4:8])[0]
        described["metadata"] = json.loads(raw[8 : 8 + length])
        described["image_magic"] = raw[8 + length : 12 + length].hex()
    return described


class Http:
    def __init__(self, base_url: str, transcript: Transcript) -> None:
        self.client = httpx.AsyncClient(base_url=base_url, timeout=30)
        self.transcript = transcript

    async def __call__(self, method: str, path: str, body: Any = None, **params: Any) -> httpx.Response:
        response = await self.client.request(method, path, json=body, params=params or None)
        content_type = response.headers.get("content-type", "")
        answer: Any
        if "json" in content_type:
            answer = response.json()
        elif content_type.startswith("text/"):
            answer = response.text[:500]
        else:
            answer = {"bytes": len(response.content), "magic": response.content[:8].hex()}
        self.transcript.add(
            "http",
            method=method,
            path=path,
            params=params or None,
            body=body,
            status=response.status_code,
            content_type=content_type,
            answer=answer,
        )
        return response

    async def close(self) -> None:
        await self.client.aclose()


# --- scenarios ----------------------------------------------------------------------------------


async def basic(base: str, t: Transcript) -> None:
    http, a = Http(base, t), Client(base, "a", t)
    await a.start()
    workflow = image_workflow(random.randrange(2**24))
    prompt_id = (await http("POST", "/prompt", {"prompt": workflow, "client_id": a.id})).json()["prompt_id"]
    # What a client that stops at execution_success finds in /history at that moment.
    await a.wait_for("execution_success", prompt_id)
    await http("GET", f"/history/{prompt_id}")
    await a.wait_done(prompt_id)
    history = (await http("GET", f"/history/{prompt_id}")).json()[prompt_id]
    image = history["outputs"]["3"]["images"][0]
    await http("GET", "/view", filename=image["filename"], subfolder=image["subfolder"], type=image["type"])
    # The same workflow again: everything is cached.
    again = (await http("POST", "/prompt", {"prompt": workflow, "client_id": a.id})).json()["prompt_id"]
    await a.wait_done(again)
    await http("GET", f"/history/{again}")
    await a.stop()
    await http.close()


async def own_prompt_id(base: str, t: Transcript) -> None:
    http, a = Http(base, t), Client(base, "a", t)
    await a.start()
    chosen = str(uuid.uuid4())
    await http(
        "POST", "/prompt", {"prompt": image_workflow(random.randrange(2**24)), "client_id": a.id, "prompt_id": chosen}
    )
    await a.wait_done(chosen)
    await http("GET", f"/history/{chosen}")
    await a.stop()
    await http.close()


async def progress(base: str, t: Transcript) -> None:
    http = Http(base, t)
    for name, metadata in (("legacy", False), ("metadata", True)):
        client = Client(base, name, t, preview_metadata=metadata)
        await client.start()
        workflow = image_workflow(random.randrange(2**24), slow={})
        prompt_id = (await http("POST", "/prompt", {"prompt": workflow, "client_id": client.id})).json()["prompt_id"]
        await client.wait_done(prompt_id)
        await client.stop()
    await http.close()


async def execution_error(base: str, t: Transcript) -> None:
    http, a = Http(base, t), Client(base, "a", t)
    await a.start()
    workflow = image_workflow(random.randrange(2**24), slow={"fail": True})
    prompt_id = (await http("POST", "/prompt", {"prompt": workflow, "client_id": a.id})).json()["prompt_id"]
    await a.wait_done(prompt_id)
    await http("GET", f"/history/{prompt_id}")
    await a.stop()
    await http.close()


async def validation_errors(base: str, t: Transcript) -> None:
    http = Http(base, t)
    bad_value = image_workflow(1)
    bad_value["1"]["inputs"]["width"] = 0
    del bad_value["2"]["inputs"]["image"]
    await http("POST", "/prompt", {"prompt": bad_value, "client_id": "nobody"})
    await http("POST", "/prompt", {"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}})
    await http(
        "POST",
        "/prompt",
        {
            "prompt": {
                "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}
            }
        },
    )
    await http("POST", "/prompt", {"client_id": "nobody"})
    await http.close()


async def concurrent_cancel(base: str, t: Transcript) -> None:
    """A runs; B waits behind it and is cancelled while queued; C is cancelled while running."""
    http = Http(base, t)
    a, b, c = Client(base, "a", t), Client(base, "b", t), Client(base, "c", t)
    for client in (a, b, c):
        await client.start()
    slow = {"steps": 12, "seconds_per_step": 0.25, "preview": False}
    pa = (
        await http("POST", "/prompt", {"prompt": image_workflow(random.randrange(2**24), slow=slow), "client_id": a.id})
    ).json()["prompt_id"]
    pb = (
        await http("POST", "/prompt", {"prompt": image_workflow(random.randrange(2**24), slow=slow), "client_id": b.id})
    ).json()["prompt_id"]
    await a.wait_for("progress", pa, value=2)
    await http("GET", "/queue")
    await http("POST", "/interrupt", {"prompt_id": pb})  # not running: ComfyUI skips it
    await http("POST", "/queue", {"delete": [pb]})
    await http("GET", "/queue")
    pc = (
        await http("POST", "/prompt", {"prompt": image_workflow(random.randrange(2**24), slow=slow), "client_id": c.id})
    ).json()["prompt_id"]
    await a.wait_done(pa)
    await c.wait_for("progress", pc, value=2)
    await http("POST", "/queue", {"delete": [pc]})  # running: not in the pending queue, nothing happens
    await http("POST", "/interrupt", {"prompt_id": pc})
    await c.wait_done(pc)
    await http("GET", f"/history/{pa}")
    await http("GET", f"/history/{pb}")
    await http("GET", f"/history/{pc}")
    await http("GET", "/queue")
    for client in (a, b, c):
        await client.stop()
    await http.close()


async def global_interrupt(base: str, t: Transcript) -> None:
    """`POST /interrupt` with no body stops whatever runs, whoever queued it."""
    http, a = Http(base, t), Client(base, "a", t)
    await a.start()
    slow = {"steps": 12, "seconds_per_step": 0.25, "preview": False}
    pa = (
        await http("POST", "/prompt", {"prompt": image_workflow(random.randrange(2**24), slow=slow), "client_id": a.id})
    ).json()["prompt_id"]
    await a.wait_for("progress", pa, value=2)
    await http("POST", "/interrupt")
    await a.wait_done(pa)
    await a.stop()
    await http.close()


async def endpoints(base: str, t: Transcript) -> None:
    http = Http(base, t)
    await http("GET", "/system_stats")
    await http("GET", "/object_info/CheckpointLoaderSimple")
    await http("GET", "/object_info/EmptyImage")
    await http("GET", f"/history/{uuid.uuid4()}")
    await http("GET", "/queue")
    await http("GET", "/view", filename="missing.png", subfolder="", type="output")
    await http.close()


SCENARIOS = {
    "basic": basic,
    "own_prompt_id": own_prompt_id,
    "progress": progress,
    "execution_error": execution_error,
    "validation_errors": validation_errors,
    "concurrent_cancel": concurrent_cancel,
    "global_interrupt": global_interrupt,
    "endpoints": endpoints,
}


# --- the server ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_comfyui(args: argparse.Namespace, port: int, log: Any) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            args.python,
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-auto-launch",
            "--output-directory",
            args.output,
        ],
        cwd=args.comfyui,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"http://127.0.0.1:{port}/system_stats")).status_code == 200:
                    return process
            if process.poll() is not None:
                raise RuntimeError("ComfyUI exited; see its log")
            await asyncio.sleep(0.5)
    raise RuntimeError("ComfyUI did not come up")


async def killed(
    args: argparse.Namespace, port: int, process: subprocess.Popen[bytes], log: Any, version: str
) -> subprocess.Popen[bytes]:
    """SIGKILL mid-prompt: what the client sees, then what a restarted ComfyUI remembers."""
    base = f"http://127.0.0.1:{port}"
    t = Transcript("killed", killed.__doc__ or "")
    http, a = Http(base, t), Client(base, "a", t)
    await a.start()
    slow = {"steps": 40, "seconds_per_step": 0.25, "preview": False}
    done = (
        await http("POST", "/prompt", {"prompt": image_workflow(random.randrange(2**24)), "client_id": a.id})
    ).json()["prompt_id"]
    await a.wait_done(done)
    pa = (
        await http("POST", "/prompt", {"prompt": image_workflow(random.randrange(2**24), slow=slow), "client_id": a.id})
    ).json()["prompt_id"]
    await a.wait_for("progress", pa, value=2)
    process.kill()
    process.wait()
    t.add("note", text="ComfyUI killed with SIGKILL")
    assert a.task is not None
    await a.task
    try:
        await http("GET", "/system_stats")
    except httpx.TransportError as exc:
        t.add("http", method="GET", path="/system_stats", error=type(exc).__name__)
    process = await start_comfyui(args, port, log)
    t.add("note", text="ComfyUI started again on the same port")
    await http("GET", "/system_stats")
    await http("GET", f"/history/{done}")
    await http("GET", f"/history/{pa}")
    await http("GET", "/queue")
    await http.close()
    t.save(version)
    return process


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", required=True, help="a ComfyUI checkout")
    parser.add_argument("--python", default=sys.executable, help="the Python that has ComfyUI's requirements")
    parser.add_argument("--output", default="/tmp/comfyui-transcript-output", help="ComfyUI's output directory")
    parser.add_argument("--only", nargs="*", help="scenarios to record (default: all)")
    args = parser.parse_args()
    link = Path(args.comfyui) / "custom_nodes" / NODE.name
    if not link.exists():
        link.symlink_to(NODE.resolve())
    port = free_port()
    with open("/tmp/comfyui-record.log", "w") as log:
        process = await start_comfyui(args, port, log)
        base = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient() as client:
                version = (await client.get(f"{base}/system_stats")).json()["system"]["comfyui_version"]
            print(f"ComfyUI {version} on {base}")
            for name, scenario in SCENARIOS.items():
                if args.only and name not in args.only:
                    continue
                transcript = Transcript(name, (scenario.__doc__ or "").strip())
                await scenario(base, transcript)
                transcript.save(version)
            if not args.only or "killed" in args.only:
                process = await killed(args, port, process, log, version)
        finally:
            process.terminate()
            process.wait()


if __name__ == "__main__":
    asyncio.run(main())
