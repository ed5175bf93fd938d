"""A fake ComfyUI that speaks its HTTP and websocket protocol, for the adapter's tests.

`/ws?clientId=` gets `status`, then per prompt: `execution_start`, `execution_cached`,
`executing` per node, `progress {value, max}` on the sampler with a binary preview frame between,
`executed` with the saved images, then `executing {node: null}` and `execution_success`.
`POST /prompt` checks the workflow as ComfyUI does (400 with `error` and `node_errors` for an
unknown checkpoint). `/history/<id>`, `/view`, `/interrupt`, `/object_info/...` and
`/system_stats` answer with ComfyUI's shapes. The prompt text chooses trouble: "explode" ends in
`execution_error`, "slow" samples until `/interrupt`, "vanish" closes the websocket halfway.
"""

from __future__ import annotations

import asyncio
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response

CHECKPOINTS = ["sd_xl_base_1.0.safetensors", "flux1-schnell-fp8.safetensors", "flux1-dev-fp8.safetensors",
               "ltx-video-2b-v0.9.5.safetensors"]


def png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@dataclass
class ComfyState:
    sockets: dict[str, WebSocket] = field(default_factory=dict)
    prompts: list[dict[str, Any]] = field(default_factory=list)
    history: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    interrupted: asyncio.Event = field(default_factory=asyncio.Event)
    interrupts: int = 0
    running: set[asyncio.Task[None]] = field(default_factory=set)


def comfyui_app(state: ComfyState) -> FastAPI:
    app = FastAPI()

    @app.websocket("/ws")
    async def ws(socket: WebSocket, clientId: str) -> None:
        await socket.accept()
        state.sockets[clientId] = socket
        await socket.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}},
                                                           "sid": clientId}})
        try:
            while True:
                await socket.receive_text()
        except WebSocketDisconnect:
            state.sockets.pop(clientId, None)

    @app.post("/prompt")
    async def prompt(request: Request) -> JSONResponse:
        body = await request.json()
        workflow, client_id = body["prompt"], body.get("client_id")
        for node_id, node in workflow.items():
            if node["class_type"] == "CheckpointLoaderSimple" and node["inputs"]["ckpt_name"] not in CHECKPOINTS:
                return JSONResponse({"error": {"type": "prompt_outputs_failed_validation", "message":
                                               "Prompt outputs failed validation", "details": "", "extra_info": {}},
                                     "node_errors": {node_id: {"errors": [{
                                         "type": "value_not_in_list", "message": "Value not in list",
                                         "details": f"ckpt_name: '{node['inputs']['ckpt_name']}' not in list"}],
                                         "dependent_outputs": ["9"], "class_type": "CheckpointLoaderSimple"}}},
                                    status_code=400)
        prompt_id = str(uuid.uuid4())
        state.prompts.append(workflow)
        task = asyncio.create_task(_execute(state, prompt_id, workflow, client_id))
        state.running.add(task)
        task.add_done_callback(state.running.discard)
        return JSONResponse({"prompt_id": prompt_id, "number": len(state.prompts), "node_errors": {}})

    @app.get("/history/{prompt_id}")
    async def history(prompt_id: str) -> dict[str, Any]:
        return {prompt_id: state.history[prompt_id]} if prompt_id in state.history else {}

    @app.get("/view")
    async def view(filename: str, subfolder: str = "", type: str = "output") -> Response:
        if filename not in state.files:
            return Response(status_code=404)
        return Response(state.files[filename], media_type="image/png")

    @app.post("/interrupt")
    async def interrupt() -> Response:
        state.interrupts += 1
        state.interrupted.set()
        return Response(status_code=200)

    @app.get("/object_info/CheckpointLoaderSimple")
    async def object_info() -> dict[str, Any]:
        return {"CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [CHECKPOINTS, {}]}},
                                           "output": ["MODEL", "CLIP", "VAE"]}}

    @app.get("/system_stats")
    async def system_stats() -> dict[str, Any]:
        return {"system": {"os": "posix", "comfyui_version": "0.3.0"},
                "devices": [{"name": "cuda:0 NVIDIA H100", "type": "cuda", "index": 0,
                             "vram_total": 85_000_000_000, "vram_free": 60_000_000_000}]}

    return app


async def _execute(state: ComfyState, prompt_id: str, workflow: dict[str, Any], client_id: str | None) -> None:
    socket = state.sockets.get(client_id or "")
    if socket is None:
        return

    async def send(kind: str, data: dict[str, Any]) -> None:
        await socket.send_json({"type": kind, "data": {**data, "prompt_id": prompt_id}})

    text = next(n["inputs"]["text"] for n in workflow.values() if n["class_type"] == "CLIPTextEncode")
    sampler = next(k for k, n in workflow.items() if n["class_type"] in ("KSampler", "SamplerCustomAdvanced"))
    latent = next(n["inputs"] for n in workflow.values() if n["class_type"].startswith("Empty"))
    steps = next(n["inputs"]["steps"] for n in workflow.values() if n["class_type"] in ("KSampler", "LTXVScheduler"))
    saver_id, saver = next((k, n) for k, n in workflow.items() if n["class_type"].startswith("Save"))
    await send("execution_start", {"timestamp": 0})
    await send("execution_cached", {"nodes": [], "timestamp": 0})
    for node_id in workflow:
        await send("executing", {"node": node_id, "display_node": node_id})
        if node_id != sampler:
            continue
        step = 0
        while step < steps or text == "slow":
            step += 1
            await asyncio.sleep(0.01 if text != "slow" else 0.1)
            if text == "slow" and state.interrupted.is_set():
                await send("execution_interrupted", {"node_id": sampler, "node_type": "KSampler", "executed": []})
                return
            await send("progress", {"value": min(step, steps), "max": steps, "node": sampler})
            await socket.send_bytes(struct.pack(">II", 1, 2) + png(8, 8))  # a preview frame
            if text == "vanish" and step == 2:
                await socket.close()
                return
        if text == "explode":
            await send("execution_error", {"node_id": sampler, "node_type": "KSampler", "executed": [],
                                           "exception_message": "CUDA out of memory", "exception_type":
                                           "torch.OutOfMemoryError", "traceback": [], "current_inputs": {},
                                           "current_outputs": {}})
            return
    images = []
    for n in range(latent["batch_size"]):
        if saver["class_type"] == "SaveAnimatedWEBP":  # a video: one animated WebP of `length` frames
            name = f"tessera_{prompt_id[:8]}_{n:05}_.webp"
            body = b"VP8X" + struct.pack("<I", 10) + bytes(10) + b"ANIM" + struct.pack("<I", latent["length"])
            state.files[name] = b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body
        else:
            name = f"tessera_{prompt_id[:8]}_{n:05}_.png"
            state.files[name] = png(latent["width"] // 64, latent["height"] // 64)
        images.append({"filename": name, "subfolder": "", "type": "output"})
    state.history[prompt_id] = {"prompt": [0, prompt_id, workflow, {}, [saver_id]],
                                "outputs": {saver_id: {"images": images}},
                                "status": {"status_str": "success", "completed": True, "messages": []}}
    await send("executed", {"node": saver_id, "display_node": saver_id, "output": {"images": images}})
    await send("executing", {"node": None})
    await send("execution_success", {"timestamp": 0})
