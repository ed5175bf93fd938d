"""A fake ComfyUI written from the transcripts of ComfyUI 0.8.0 in tests/comfyui_transcripts/.

What it copies from the real one:
- One prompt runs at a time, first in first out; `status {queue_remaining}` goes to every socket
  when the queue changes.
- Per prompt, to the client that queued it: `execution_start`, `execution_cached {nodes}`, then
  for each node not cached `progress_state`, `executing {node}`, `progress {value, max, node}`
  and a binary preview frame per step on sampler nodes only, `executed` for output nodes; then
  `execution_success` (or `execution_error` with `current_outputs` as a list, or
  `execution_interrupted`), THEN the /history entry is written (`history_delay_s` later), THEN
  `executing {node: null}`. A prompt equal to the last one is all cached: no `executing` per
  node, only `executed` for its outputs.
- Preview frames: event type 1 with a 4-byte image type (1 = JPEG) before the image; event type
  4 (a JSON header with node and prompt ids, then the image) to a client whose first message
  was `feature_flags {supports_preview_metadata: true}`.
- `POST /prompt` takes a client-chosen `prompt_id`; refusals are 400 with `error {type, message,
  details, extra_info}` and `node_errors`. `POST /interrupt` with a `prompt_id` stops only that
  prompt when it runs, without one whatever runs; `POST /queue {"delete": [...]}` drops waiting
  prompts. `/history`, `/queue`, `/view`, `/object_info`, `/system_stats` answer in ComfyUI's shapes.
- `kill()` drops every connection without a websocket close frame, as a killed process does,
  and forgets the queue and history; `start()` brings it back on the same port. `freeze()` keeps
  the connections open but stops answering anything, pings included.

The prompt text chooses trouble: "explode" fails the sampler, "slow" samples until interrupted,
"vanish" kills the server at the second step.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import struct
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response

from tessera.embedded import free_port

CHECKPOINTS = [
    "sd_xl_base_1.0.safetensors",
    "flux1-schnell-fp8.safetensors",
    "flux1-dev-fp8.safetensors",
    "ltx-video-2b-v0.9.5.safetensors",
]
# Nodes that report progress through comfy.utils.ProgressBar, as samplers do.
SAMPLERS = {"KSampler", "KSamplerAdvanced", "SamplerCustomAdvanced", "TesseraSlowProgress"}
KNOWN_NODES = SAMPLERS | {
    "CheckpointLoaderSimple",
    "CLIPTextEncode",
    "EmptyLatentImage",
    "EmptySD3LatentImage",
    "VAEDecode",
    "SaveImage",
    "PreviewImage",
    "FluxGuidance",
    "EmptyImage",
    "ImageInvert",
    "EmptyLTXVLatentVideo",
    "LTXVConditioning",
    "LTXVScheduler",
    "KSamplerSelect",
    "RandomNoise",
    "CFGGuider",
    "BasicGuider",
    "BasicScheduler",
    "SaveAnimatedWEBP",
    "ModelSamplingLTXV",
    "LTXVImgToVideo",
    "CLIPLoader",
    "ConditioningZeroOut",
}
# Lower bounds ComfyUI's node schemas put on sizes, checked as validate_inputs does.
MINIMUMS = {
    ("EmptyImage", "width"): 1,
    ("EmptyImage", "height"): 1,
    ("EmptyLatentImage", "width"): 16,
    ("EmptyLatentImage", "height"): 16,
    ("EmptySD3LatentImage", "width"): 16,
    ("EmptySD3LatentImage", "height"): 16,
}
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"  # a stand-in preview


def png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


class Interrupted(Exception):
    pass


class Explosion(Exception):
    pass


@dataclass
class Queued:
    number: int
    prompt_id: str
    workflow: dict[str, Any]
    client_id: str | None

    def row(self) -> list[Any]:
        """As /queue and /history show a prompt."""
        return [self.number, self.prompt_id, self.workflow, {"client_id": self.client_id}, _outputs(self.workflow)]


@dataclass
class ServerMemory:
    """What a ComfyUI process holds in memory, lost when it dies."""

    sockets: dict[str, WebSocket] = field(default_factory=dict)
    previews_with_metadata: set[str] = field(default_factory=set)
    queue: collections.deque[Queued] = field(default_factory=collections.deque)
    running: Queued | None = None
    history: dict[str, Any] = field(default_factory=dict)
    # The last prompt's nodes by signature, with what output nodes showed: ComfyUI's classic cache.
    cache: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    number: int = 0
    interrupt: bool = False
    work: asyncio.Event = field(default_factory=asyncio.Event)


class FakeComfyUI:
    """`async with FakeComfyUI() as fake:` serves at `fake.url` until the block ends."""

    def __init__(
        self,
        *,
        step_s: float = 0.005,
        history_delay_s: float = 0.01,
        previews: bool = True,
        send_final_executing: bool = True,
    ) -> None:
        self.port = free_port(None)
        self.url = f"http://127.0.0.1:{self.port}"
        self.step_s = step_s
        self.history_delay_s = history_delay_s  # between execution_success and the /history entry
        self.previews = previews
        self.send_final_executing = send_final_executing
        self.memory = ServerMemory()
        self.files: dict[str, bytes] = {}  # the output folder: it outlives the process
        # What tests read: every workflow accepted, every /interrupt body, every prompt's end.
        self.prompts: list[dict[str, Any]] = []
        self.interrupts: list[str | None] = []
        self.finished: dict[str, str] = {}  # prompt id -> success | error | interrupted
        self.started: list[str] = []  # prompt ids in the order they began to run
        self.accepted: list[str] = []  # prompt ids in the order /prompt queued them
        self.posts = 0  # POST /prompt requests received, answered or not
        self.accept_delay_s = 0.0  # how long /prompt validates before it queues and answers
        self._server: uvicorn.Server | None = None
        self._serving: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._frozen, self._thawed = asyncio.Event(), asyncio.Event()
        self._dying: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FakeComfyUI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self.memory = ServerMemory()
        self._frozen, self._thawed = asyncio.Event(), asyncio.Event()
        config = uvicorn.Config(self._app(), host="127.0.0.1", port=self.port, log_level="critical", lifespan="off")
        self._server = uvicorn.Server(config)
        self._serving = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._serving.done():
                self._serving.result()
            await asyncio.sleep(0.01)
        self._worker = asyncio.create_task(self._prompt_worker())

    async def stop(self) -> None:
        """A clean shutdown: websockets get their close frame."""
        await self._halt(abrupt=False)

    async def kill(self) -> None:
        """As SIGKILL: every connection drops at once, no close frame, and memory is lost."""
        await self._halt(abrupt=True)

    async def freeze(self) -> None:
        """A hung host: connections stay open, nothing is read or answered, pings included."""
        self._frozen.set()
        if self._server is not None:
            for connection in list(self._server.server_state.connections):
                connection.transport.pause_reading()  # type: ignore[union-attr]

    async def _halt(self, *, abrupt: bool) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        server, self._server = self._server, None
        if server is None or self._serving is None:
            return
        if abrupt or self._frozen.is_set():
            for listener in getattr(server, "servers", []):
                listener.close()
            for connection in list(server.server_state.connections):
                connection.transport.abort()  # type: ignore[union-attr]
            server.force_exit = True
        server.should_exit = True
        self._thawed.set()
        await asyncio.wait_for(self._serving, 10)
        self.memory = ServerMemory()

    # --- the HTTP and websocket API -------------------------------------------------------------

    def _app(self) -> Any:
        api = self._api()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            # Plain ASGI, not an HTTP middleware: like ComfyUI's aiohttp, a handler runs on when its
            # client hangs up (a prompt is queued even if the client gave up waiting for the answer).
            if scope["type"] == "http" and self._frozen.is_set():
                await self._thawed.wait()  # never answered: the connection drops when the server halts
                return
            await api(scope, receive, send)

        return app

    def _api(self) -> FastAPI:
        app = FastAPI()
        self._socket_route(app)
        self._prompt_routes(app)
        self._read_routes(app)
        return app

    def _socket_route(self, app: FastAPI) -> None:
        memory = self.memory

        @app.websocket("/ws")
        async def ws(socket: WebSocket, clientId: str = "") -> None:
            sid = clientId or uuid.uuid4().hex
            await socket.accept()
            memory.sockets[sid] = socket
            await socket.send_json({"type": "status", "data": {"status": self._queue_info(), "sid": sid}})
            first = True
            try:
                while True:
                    text = await socket.receive_text()
                    with contextlib.suppress(ValueError, AttributeError):
                        message = json.loads(text)
                        if first and message.get("type") == "feature_flags":
                            if (message.get("data") or {}).get("supports_preview_metadata"):
                                memory.previews_with_metadata.add(sid)
                            await socket.send_json(
                                {
                                    "type": "feature_flags",
                                    "data": {"supports_preview_metadata": True, "max_upload_size": 104857600},
                                }
                            )
                    first = False
            except WebSocketDisconnect:
                pass
            finally:
                if memory.sockets.get(sid) is socket:
                    del memory.sockets[sid]

    def _prompt_routes(self, app: FastAPI) -> None:
        """Queueing, the queue and interrupting."""
        memory = self.memory

        @app.post("/prompt")
        async def prompt(request: Request) -> JSONResponse:
            body = await request.json()
            self.posts += 1
            await asyncio.sleep(self.accept_delay_s)
            if "prompt" not in body:
                return _refusal("no_prompt", "No prompt provided", "No prompt provided")
            workflow, client_id = body["prompt"], body.get("client_id")
            prompt_id = str(body.get("prompt_id") or uuid.uuid4())
            refused = _validate(workflow)
            if refused is not None:
                return refused
            number = memory.number
            memory.number += 1
            memory.queue.append(Queued(number, prompt_id, workflow, client_id))
            self.prompts.append(workflow)
            self.accepted.append(prompt_id)
            memory.work.set()
            await self._broadcast_status()
            return JSONResponse({"prompt_id": prompt_id, "number": number, "node_errors": {}})

        @app.get("/queue")
        async def queue() -> dict[str, Any]:
            running = [memory.running.row()] if memory.running else []
            return {"queue_running": running, "queue_pending": [q.row() for q in memory.queue]}

        @app.post("/queue")
        async def queue_change(request: Request) -> Response:
            body = await request.json()
            if body.get("clear"):
                memory.queue.clear()
            for prompt_id in body.get("delete") or []:
                for queued in [q for q in memory.queue if q.prompt_id == prompt_id]:
                    memory.queue.remove(queued)
            await self._broadcast_status()
            return Response(status_code=200)

        @app.post("/interrupt")
        async def interrupt(request: Request) -> Response:
            try:
                prompt_id = (await request.json()).get("prompt_id")
            except ValueError:
                prompt_id = None
            self.interrupts.append(prompt_id)
            if prompt_id is None or (memory.running is not None and memory.running.prompt_id == prompt_id):
                memory.interrupt = True
            return Response(status_code=200)

    def _read_routes(self, app: FastAPI) -> None:
        """History, outputs and what the server holds."""
        memory = self.memory

        @app.get("/history")
        async def history_all() -> dict[str, Any]:
            return dict(memory.history)

        @app.get("/history/{prompt_id}")
        async def history(prompt_id: str) -> dict[str, Any]:
            return {prompt_id: memory.history[prompt_id]} if prompt_id in memory.history else {}

        @app.get("/view")
        async def view(filename: str, subfolder: str = "", type: str = "output") -> Response:
            if filename not in self.files or type != "output":
                return Response(status_code=404)
            media = "image/webp" if filename.endswith(".webp") else "image/png"
            return Response(self.files[filename], media_type=media)

        @app.get("/object_info/CheckpointLoaderSimple")
        async def object_info() -> dict[str, Any]:
            return {
                "CheckpointLoaderSimple": {
                    "input": {"required": {"ckpt_name": [CHECKPOINTS, {"tooltip": "The name of the checkpoint."}]}},
                    "input_order": {"required": ["ckpt_name"]},
                    "output": ["MODEL", "CLIP", "VAE"],
                    "output_is_list": [False, False, False],
                    "output_name": ["MODEL", "CLIP", "VAE"],
                    "name": "CheckpointLoaderSimple",
                    "output_node": False,
                }
            }

        @app.get("/system_stats")
        async def system_stats() -> dict[str, Any]:
            return {
                "system": {
                    "os": "linux",
                    "ram_total": 68_000_000_000,
                    "ram_free": 60_000_000_000,
                    "comfyui_version": "0.8.0",
                    "python_version": "3.11.7",
                    "pytorch_version": "2.13.0",
                    "embedded_python": False,
                    "argv": ["main.py"],
                },
                "devices": [
                    {
                        "name": "cuda:0 NVIDIA H100 : cudaMallocAsync",
                        "type": "cuda",
                        "index": 0,
                        "vram_total": 85_000_000_000,
                        "vram_free": 60_000_000_000,
                        "torch_vram_total": 0,
                        "torch_vram_free": 0,
                    }
                ],
            }

    # --- the prompt worker ----------------------------------------------------------------------

    def _queue_info(self) -> dict[str, Any]:
        remaining = len(self.memory.queue) + (1 if self.memory.running else 0)
        return {"exec_info": {"queue_remaining": remaining}}

    async def _send(self, client_id: str | None, kind: str, data: dict[str, Any]) -> None:
        """To the client that queued the prompt, or to everyone when it gave no client_id."""
        if self._frozen.is_set():  # a hung host sends nothing
            return
        targets = [self.memory.sockets.get(client_id)] if client_id else list(self.memory.sockets.values())
        for socket in targets:
            if socket is not None:
                with contextlib.suppress(Exception):  # a client gone away misses it, as in ComfyUI
                    await socket.send_json({"type": kind, "data": data})

    async def _send_bytes(self, client_id: str | None, data: bytes) -> None:
        socket = self.memory.sockets.get(client_id or "")
        if socket is not None and not self._frozen.is_set():
            with contextlib.suppress(Exception):
                await socket.send_bytes(data)

    async def _broadcast_status(self) -> None:
        await self._send(None, "status", {"status": self._queue_info()})

    async def _prompt_worker(self) -> None:
        memory = self.memory
        while True:
            while not memory.queue:
                memory.work.clear()
                await memory.work.wait()
            memory.running = memory.queue.popleft()
            await self._broadcast_status()
            await self._execute(memory.running)

    async def _execute(self, item: Queued) -> None:
        memory, prompt_id, client = self.memory, item.prompt_id, item.client_id
        self.started.append(prompt_id)
        memory.interrupt = False
        messages: list[list[Any]] = []

        async def message(kind: str, data: dict[str, Any]) -> None:
            data = {**data, "prompt_id": prompt_id, "timestamp": int(time.time() * 1000)}
            messages.append([kind, data])
            await self._send(client, kind, data)

        order = _topological(item.workflow)
        signatures = {node_id: _signature(item.workflow, node_id) for node_id in order}
        cached = [n for n in item.workflow if signatures[n] in memory.cache]
        await message("execution_start", {})
        await message("execution_cached", {"nodes": cached})
        outputs: dict[str, Any] = {}
        executed: list[str] = []
        status = "success"
        try:
            for node_id in order:
                node = item.workflow[node_id]
                if node_id in cached:
                    shown = memory.cache[signatures[node_id]]
                    if shown is not None:
                        outputs[node_id] = shown
                        await self._send(
                            client,
                            "executed",
                            {
                                "node": node_id,
                                "display_node": node_id,
                                "output": outputs[node_id],
                                "prompt_id": prompt_id,
                            },
                        )
                    continue
                if memory.interrupt:  # ComfyUI checks before each node, and between a sampler's steps
                    raise Interrupted
                await self._progress_state(client, prompt_id, executed, node_id)
                await self._send(
                    client, "executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}
                )
                if node["class_type"] in SAMPLERS:
                    await self._sample(item, node_id)
                if _is_output(node):
                    outputs[node_id] = self._saved(prompt_id, item.workflow, node_id)
                    await self._send(
                        client,
                        "executed",
                        {"node": node_id, "display_node": node_id, "output": outputs[node_id], "prompt_id": prompt_id},
                    )
                executed.append(node_id)
                await self._progress_state(client, prompt_id, executed, None)
            await message("execution_success", {})
            memory.cache = {signatures[n]: outputs.get(n) for n in order}
        except Interrupted:
            status = "interrupted"
            await message(
                "execution_interrupted",
                {"node_id": node_id, "node_type": node["class_type"], "executed": list(executed)},
            )
        except Explosion:
            status = "error"
            await message(
                "execution_error",
                {
                    "node_id": node_id,
                    "node_type": node["class_type"],
                    "executed": list(executed),
                    "exception_message": "CUDA out of memory. Tried to allocate 2.00 GiB\n",
                    "exception_type": "torch.OutOfMemoryError",
                    "traceback": ['  File "execution.py", line 518\n'],
                    "current_inputs": {},
                    "current_outputs": [n for n in item.workflow if signatures[n] in memory.cache],
                },
            )
        # ComfyUI writes the history after the last execution message, and only then says the
        # prompt is over.
        await asyncio.sleep(self.history_delay_s)
        memory.history[prompt_id] = {
            "prompt": item.row(),
            "outputs": outputs if status == "success" else {},
            "status": {
                "status_str": "success" if status == "success" else "error",
                "completed": status == "success",
                "messages": messages,
            },
            "meta": {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in outputs},
        }
        self.finished[prompt_id] = status
        memory.running = None
        await self._broadcast_status()
        if client and self.send_final_executing:
            await self._send(client, "executing", {"node": None, "prompt_id": prompt_id})

    async def _progress_state(self, client: str | None, prompt_id: str, done: list[str], running: str | None) -> None:
        nodes = {
            n: {
                "value": 1.0,
                "max": 1.0,
                "state": "finished",
                "node_id": n,
                "prompt_id": prompt_id,
                "display_node_id": n,
                "parent_node_id": None,
                "real_node_id": n,
            }
            for n in done
        }
        if running is not None:
            nodes[running] = {
                "value": 0.0,
                "max": 1.0,
                "state": "running",
                "node_id": running,
                "prompt_id": prompt_id,
                "display_node_id": running,
                "parent_node_id": None,
                "real_node_id": running,
            }
        await self._send(client, "progress_state", {"prompt_id": prompt_id, "nodes": nodes})

    async def _sample(self, item: Queued, node_id: str) -> None:
        """Steps with `progress`, `progress_state` and a preview frame each; trouble on request."""
        text = _prompt_text(item.workflow)
        steps = _steps(item.workflow, node_id)
        step = 0
        while step < steps or text == "slow":
            await asyncio.sleep(self.step_s if text != "slow" else max(self.step_s, 0.02))
            if self.memory.interrupt:  # ComfyUI checks between steps (the ProgressBar hook)
                raise Interrupted
            step += 1
            value = min(step, steps)
            await self._send(
                item.client_id,
                "progress_state",
                {
                    "prompt_id": item.prompt_id,
                    "nodes": {
                        node_id: {
                            "value": float(value),
                            "max": float(steps),
                            "state": "running",
                            "node_id": node_id,
                            "prompt_id": item.prompt_id,
                            "display_node_id": node_id,
                            "parent_node_id": None,
                            "real_node_id": node_id,
                        }
                    },
                },
            )
            await self._send(
                item.client_id, "progress", {"value": value, "max": steps, "prompt_id": item.prompt_id, "node": node_id}
            )
            if self.previews and item.workflow[node_id]["inputs"].get("preview", True):
                await self._send_bytes(item.client_id, self._preview(item, node_id))
            if text == "vanish" and step == 2:
                self._dying = asyncio.create_task(self.kill())
                await asyncio.Event().wait()  # the process is dying: nothing more is sent
            fails = item.workflow[node_id]["inputs"].get("fail")  # TesseraSlowProgress, as recorded
            if (text == "explode" and step == 2) or (fails and step == steps // 2):
                raise Explosion

    def _preview(self, item: Queued, node_id: str) -> bytes:
        if item.client_id in self.memory.previews_with_metadata:
            header = json.dumps(
                {
                    "node_id": node_id,
                    "prompt_id": item.prompt_id,
                    "display_node_id": node_id,
                    "parent_node_id": None,
                    "real_node_id": node_id,
                    "image_type": "image/jpeg",
                }
            ).encode()
            return struct.pack(">II", 4, len(header)) + header + JPEG
        return struct.pack(">II", 1, 1) + JPEG

    def _saved(self, prompt_id: str, workflow: dict[str, Any], node_id: str) -> dict[str, Any]:
        """The files an output node writes, as `executed` and /history list them."""
        node = workflow[node_id]
        latent = next((n["inputs"] for n in workflow.values() if n["class_type"].startswith("Empty")), {})
        width, height = int(latent.get("width", 512)), int(latent.get("height", 512))
        prefix = f"tessera_{prompt_id[:8]}"
        images = []
        for n in range(int(latent.get("batch_size", 1))):
            if node["class_type"] == "SaveAnimatedWEBP":  # a video: one animated WebP of `length` frames
                name = f"{prefix}_{n:05}_.webp"
                frames = struct.pack("<I", latent.get("length", 1))
                body = b"VP8X" + struct.pack("<I", 10) + bytes(10) + b"ANIM" + frames
                self.files.setdefault(name, b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body)
            else:
                name = f"{prefix}_{n:05}_.png"
                self.files.setdefault(name, png(max(1, width // 64), max(1, height // 64)))
            images.append({"filename": name, "subfolder": "", "type": "output"})
        if node["class_type"] == "SaveAnimatedWEBP":
            return {"images": images, "animated": [True]}
        return {"images": images}


# --- workflow helpers ----------------------------------------------------------------------------


def _refusal(kind: str, message: str, details: str, node_errors: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse(
        {
            "error": {"type": kind, "message": message, "details": details, "extra_info": {}},
            "node_errors": node_errors or {},
        },
        status_code=400,
    )


def _validate(workflow: dict[str, Any]) -> JSONResponse | None:
    """ComfyUI's validate_prompt, for what Tessera's workflows can get wrong."""
    for node_id, node in workflow.items():
        if node.get("class_type") not in KNOWN_NODES:
            return _refusal(
                "invalid_prompt",
                f"Cannot execute because node {node.get('class_type')} does not exist.",
                f"Node ID '#{node_id}'",
            )
    if not _outputs(workflow):
        return _refusal("prompt_no_outputs", "Prompt has no outputs", "")
    node_errors = {}
    for node_id, node in workflow.items():
        errors = []
        for name, value in node["inputs"].items():
            least = MINIMUMS.get((node["class_type"], name))
            if least is not None and isinstance(value, int) and value < least:
                errors.append(
                    {
                        "type": "value_smaller_than_min",
                        "message": f"Value {value} smaller than min of {least}",
                        "details": name,
                        "extra_info": {"input_name": name, "input_config": None, "received_value": value},
                    }
                )
        if node["class_type"] == "CheckpointLoaderSimple" and node["inputs"]["ckpt_name"] not in CHECKPOINTS:
            errors.append(
                {
                    "type": "value_not_in_list",
                    "message": "Value not in list",
                    "details": f"ckpt_name: '{node['inputs']['ckpt_name']}' not in {CHECKPOINTS}",
                    "extra_info": {
                        "input_name": "ckpt_name",
                        "input_config": None,
                        "received_value": node["inputs"]["ckpt_name"],
                    },
                }
            )
        if errors:
            node_errors[node_id] = {
                "errors": errors,
                "dependent_outputs": _outputs(workflow),
                "class_type": node["class_type"],
            }
    if node_errors:
        return _refusal("prompt_outputs_failed_validation", "Prompt outputs failed validation", "", node_errors)
    return None


def _is_output(node: dict[str, Any]) -> bool:
    return str(node.get("class_type", "")).startswith(("Save", "Preview"))


def _outputs(workflow: dict[str, Any]) -> list[str]:
    return [node_id for node_id, node in workflow.items() if _is_output(node)]


def _links(node: dict[str, Any]) -> list[str]:
    return [
        v[0] for v in node.get("inputs", {}).values() if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)
    ]


def _topological(workflow: dict[str, Any]) -> list[str]:
    order: list[str] = []

    def visit(node_id: str) -> None:
        if node_id in order or node_id not in workflow:
            return
        for upstream in _links(workflow[node_id]):
            visit(upstream)
        order.append(node_id)

    for node_id in _outputs(workflow):
        visit(node_id)
    return order


def _signature(workflow: dict[str, Any], node_id: str) -> str:
    """A node's inputs with its upstream nodes' inputs folded in: what ComfyUI's cache keys on."""
    node = workflow[node_id]
    inputs = {
        k: _signature(workflow, v[0]) if isinstance(v, list) and len(v) == 2 and v[0] in workflow else v
        for k, v in node.get("inputs", {}).items()
    }
    return format(zlib.crc32(json.dumps([node["class_type"], inputs], sort_keys=True).encode()), "08x") + node_id


def _prompt_text(workflow: dict[str, Any]) -> str:
    return next((n["inputs"]["text"] for n in workflow.values() if n["class_type"] == "CLIPTextEncode"), "")


def _steps(workflow: dict[str, Any], node_id: str) -> int:
    steps = workflow[node_id]["inputs"].get("steps")
    if isinstance(steps, int):
        return steps
    return next((n["inputs"]["steps"] for n in workflow.values() if isinstance(n["inputs"].get("steps"), int)), 20)
