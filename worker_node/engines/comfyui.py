"""Images through ComfyUI's own API: a workflow per model, progress from its websocket.

The protocol, in order: open `/ws?clientId=<id>`; `POST /prompt` with the workflow and the same
`client_id`, which answers with a `prompt_id` or with node errors; follow the websocket's
`execution_start`, `progress {value, max}`, `executing`, `executed`, then `execution_success`,
`execution_error` or `execution_interrupted`, for this prompt only (binary frames are previews and
are skipped); read the outputs from `/history/<prompt_id>` and fetch each image from `/view`.
Cancelling the job posts `/interrupt`. `/object_info` lists the checkpoints the server has, and
`/system_stats` its GPU memory.

Workflows are ComfyUI "API format" JSON files with placeholders: `"{{prompt}}"`,
`"{{negative_prompt}}"`, `"{{width}}"`, `"{{height}}"`, `"{{batch_size}}"`, `"{{steps}}"`,
`"{{cfg}}"`, `"{{seed}}"` and `"{{checkpoint}}"`. A placeholder is a whole JSON string, and it is
replaced by a value of the right type. Built-in templates live in `comfyui_templates/` (sdxl,
flux-schnell, flux-dev, and ltx-video, which also takes `"{{fps}}"` and `"{{frames}}"` and saves
an animated WebP). An operator's directory (TESSERA_COMFYUI_TEMPLATES) adds templates or
overrides these.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import struct
import uuid
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from worker_node.engines.base import EngineError, JobContext, JobInput, Output

BUILT_IN_TEMPLATES = Path(__file__).with_name("comfyui_templates")

# Defaults per model: steps, cfg (guidance for flux-dev), checkpoint file name on the server.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "sdxl": {"steps": 25, "cfg": 7.0, "checkpoint": "sd_xl_base_1.0.safetensors"},
    "flux-schnell": {"steps": 4, "cfg": 1.0, "checkpoint": "flux1-schnell-fp8.safetensors"},
    "flux-dev": {"steps": 20, "cfg": 3.5, "checkpoint": "flux1-dev-fp8.safetensors"},
    "ltx-video": {"steps": 30, "cfg": 3.0, "checkpoint": "ltx-video-2b-v0.9.5.safetensors", "fps": 24},
}
VIDEO_MODELS = {"ltx-video"}


def load_templates(extra_dir: str | None = None) -> dict[str, dict[str, Any]]:
    templates = {p.stem: json.loads(p.read_text()) for p in sorted(BUILT_IN_TEMPLATES.glob("*.json"))}
    if extra_dir:
        templates.update({p.stem: json.loads(p.read_text()) for p in sorted(Path(extra_dir).glob("*.json"))})
    return templates


def fill(template: Any, values: dict[str, Any]) -> Any:
    """The workflow with every `"{{name}}"` string replaced by `values[name]`, keeping its type."""
    if isinstance(template, dict):
        return {k: fill(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, values) for v in template]
    if isinstance(template, str) and template.startswith("{{") and template.endswith("}}"):
        name = template[2:-2]
        if name not in values:
            raise EngineError("TEMPLATE_ERROR", f"the workflow asks for {{{{{name}}}}}, which Tessera does not fill")
        return values[name]
    return template


def png_size(data: bytes) -> tuple[int | None, int | None]:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    return None, None


class ComfyUIEngine:
    name = "comfyui"

    def __init__(self, base_url: str, models: dict[str, str] | None = None, *, templates_dir: str | None = None,
                 slots: int = 1, timeout_s: float = 600.0) -> None:
        """`models` maps a catalog model to the checkpoint file the server holds (default: MODEL_DEFAULTS)."""
        self.base_url = base_url.rstrip("/")
        self.templates = load_templates(templates_dir)
        chosen = models or {m: d["checkpoint"] for m, d in MODEL_DEFAULTS.items()}
        missing = [m for m in chosen if m not in self.templates]
        if missing:
            raise ValueError(f"no ComfyUI workflow template for {', '.join(missing)}")
        self.checkpoints = chosen
        self.models = tuple(chosen)
        self.capabilities = tuple(sorted({"video" if m in VIDEO_MODELS else "image" for m in chosen}))
        # The model whose checkpoint ComfyUI used last, and so most likely holds in VRAM: what the
        # worker reports as loaded, for the scheduler's model affinity.
        self.loaded: tuple[str, ...] = ()
        self.slots = slots
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=httpx.Timeout(timeout_s, connect=10.0))

    async def close(self) -> None:
        await self._client.aclose()

    # --- discovery -------------------------------------------------------------------------------

    async def checkpoints_available(self) -> list[str]:
        response = await self._client.get("/object_info/CheckpointLoaderSimple")
        response.raise_for_status()
        return list(response.json()["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0])

    async def vram(self) -> dict[str, int] | None:
        response = await self._client.get("/system_stats")
        devices = response.json().get("devices") or []
        if not devices:
            return None
        return {"vram_total": int(devices[0]["vram_total"]), "vram_free": int(devices[0]["vram_free"])}

    # --- a job -----------------------------------------------------------------------------------

    def workflow(self, job: JobInput) -> dict[str, Any]:
        params, defaults = job.params, MODEL_DEFAULTS.get(job.model, {})
        seed = params.get("seed")
        if seed is None:
            seed = random.randrange(2**48)
        elif isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise EngineError("INVALID_PARAMS", "params.seed must be a non-negative integer")
        steps = params.get("steps", defaults.get("steps", 20))
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 150:
            raise EngineError("INVALID_PARAMS", "params.steps must be an integer from 1 to 150")
        cfg = params.get("cfg", defaults.get("cfg", 7.0))
        if isinstance(cfg, bool) or not isinstance(cfg, int | float) or not 0 <= cfg <= 30:
            raise EngineError("INVALID_PARAMS", "params.cfg must be a number from 0 to 30")
        video = job.model in VIDEO_MODELS
        fps = int(defaults.get("fps", 24))
        seconds = float(params.get("duration_seconds", 4.0))
        side = 768 if video else 1024
        values = {"prompt": str(params.get("prompt", "")), "negative_prompt": str(params.get("negative_prompt", "")),
                  "width": int(params.get("width", side)), "height": int(params.get("height", 512 if video else side)),
                  "batch_size": int(params.get("batch_size", 1)), "steps": steps, "cfg": float(cfg), "seed": seed,
                  "checkpoint": self.checkpoints[job.model], "fps": fps,
                  # LTX-Video renders 8k + 1 frames.
                  "frames": max(9, round(seconds * fps / 8) * 8 + 1)}
        return fill(self.templates[job.model], values)

    async def run(self, job: JobInput, ctx: JobContext) -> list[Output]:
        workflow = self.workflow(job)
        client_id = uuid.uuid4().hex
        ws_url = self.base_url.replace("http", "ws", 1) + f"/ws?clientId={client_id}"
        prompt_id: str | None = None
        try:
            async with connect(ws_url, max_size=None, open_timeout=10) as ws:  # before the prompt: no event missed
                response = await self._client.post("/prompt", json={"prompt": workflow, "client_id": client_id})
                if response.status_code != 200:
                    raise _prompt_error(response)
                prompt_id = response.json()["prompt_id"]
                self.loaded = (job.model,)
                await self._follow(ws, prompt_id, ctx)
            return await self._outputs(prompt_id, _video_seconds(workflow))
        except asyncio.CancelledError:
            if prompt_id is not None:
                await asyncio.shield(self._interrupt())
            raise
        except (httpx.TransportError, OSError, WebSocketException) as exc:
            raise EngineError("ENGINE_UNAVAILABLE", f"ComfyUI at {self.base_url}: {exc!r}") from exc

    async def _follow(self, ws: Any, prompt_id: str, ctx: JobContext) -> None:
        async for raw in ws:
            if isinstance(raw, bytes):  # a preview image: not an output
                continue
            message = json.loads(raw)
            kind, data = message.get("type"), message.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if kind == "progress" and data.get("max"):
                await ctx.progress(data["value"] / data["max"], f"step {data['value']} of {data['max']}", None)
            elif kind == "execution_success":
                return
            elif kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                return  # older ComfyUI: the end of a prompt is "executing" with no node
            elif kind == "execution_error":
                raise EngineError("ENGINE_ERROR", f"ComfyUI node {data.get('node_id')} ({data.get('node_type')}): "
                                  f"{data.get('exception_type')}: {data.get('exception_message')}")
            elif kind == "execution_interrupted":
                raise EngineError("ENGINE_INTERRUPTED", "ComfyUI interrupted the prompt")
        raise EngineError("ENGINE_DISCONNECTED", "ComfyUI closed the websocket before the prompt finished")

    async def _outputs(self, prompt_id: str, video_seconds: float | None = None) -> list[Output]:
        history = (await self._client.get(f"/history/{prompt_id}")).json().get(prompt_id) or {}
        outputs = []
        for node_output in (history.get("outputs") or {}).values():
            for image in node_output.get("images") or []:
                if image.get("type") != "output":
                    continue
                response = await self._client.get("/view", params={
                    "filename": image["filename"], "subfolder": image.get("subfolder", ""), "type": "output"})
                if response.status_code != 200:
                    raise EngineError("ENGINE_ERROR", f"ComfyUI could not serve {image['filename']}")
                if image["filename"].endswith(".webp"):  # SaveAnimatedWEBP: a video
                    outputs.append(Output(kind="video", format="webp", content_type="image/webp",
                                          data=response.content, duration_seconds=video_seconds,
                                          usage={"duration_seconds": video_seconds} if video_seconds else {}))
                    continue
                width, height = png_size(response.content)
                outputs.append(Output(kind="image", format="png", content_type="image/png", data=response.content,
                                      width=width, height=height))
        if not outputs:
            raise EngineError("ENGINE_ERROR", "ComfyUI finished the prompt without an output image")
        return outputs

    async def _interrupt(self) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await self._client.post("/interrupt", timeout=5)


def _video_seconds(workflow: dict[str, Any]) -> float | None:
    """The length of the video a workflow renders: frames / fps, from its latent and its saver."""
    frames = next((n["inputs"].get("length") for n in workflow.values() if "length" in n.get("inputs", {})), None)
    fps = next((n["inputs"].get("fps") for n in workflow.values() if n.get("class_type", "").startswith("Save")
                and "fps" in n.get("inputs", {})), None)
    if isinstance(frames, int) and isinstance(fps, int | float) and fps > 0:
        return round(frames / fps, 3)
    return None


def _prompt_error(response: httpx.Response) -> EngineError:
    """ComfyUI refuses a workflow with 400 and {"error": {...}, "node_errors": {...}}."""
    try:
        body = response.json()
        error = body.get("error") or {}
        detail = error.get("message") or str(error)
        for node_id, node in (body.get("node_errors") or {}).items():
            reasons = "; ".join(e.get("details") or e.get("message", "") for e in node.get("errors", []))
            detail += f"; node {node_id} ({node.get('class_type')}): {reasons}"
    except ValueError:
        detail = response.text[:300]
    return EngineError("ENGINE_REJECTED" if response.status_code < 500 else "ENGINE_ERROR",
                       f"ComfyUI refused the workflow: {detail}")
