"""Images through ComfyUI's own API: a workflow per model, progress from its websocket.

The protocol, as ComfyUI 0.8 speaks it (tests/comfyui_transcripts/ holds a recording): open
`/ws?clientId=<id>`; `POST /prompt` with the workflow, the same `client_id` and a `prompt_id`
chosen here, which answers 200 or 400 with `error` and `node_errors`. ComfyUI runs one prompt at
a time, first in first out. For a prompt the websocket brings `execution_start`,
`execution_cached`, then per node run `executing`, `progress {value, max}` from nodes that report
it (samplers), `progress_state` and `executed`, and binary preview frames; then
`execution_success`, `execution_error` or `execution_interrupted`. Only after that does ComfyUI
write `/history/<prompt_id>`, and then it sends `executing {node: null}`: that is the end of the
prompt. The outputs come from `/history` and each image from `/view`.

Cancelling withdraws this prompt only: `POST /queue {"delete": [id]}` while it waits and
`POST /interrupt {"prompt_id": id}` while it runs (ComfyUI ignores either when it does not apply).
`probe()` asks `/system_stats`; `/object_info` lists the checkpoints the server has.

The workflow templates (loading, placeholders, defaults per model) are `comfyui_workflows`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import uuid
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from worker_node.engines.base import EngineError, JobContext, JobInput, Output
from worker_node.engines.comfyui_workflows import (
    MODEL_DEFAULTS,
    fill,
    is_video,
    load_templates,
    placeholder_values,
    placeholders,
    video_seconds,
)

PROBE_TIMEOUT_S = 3.0
# After execution_success: how long to wait for `executing {node: null}` (it normally follows within
# milliseconds), then how long to keep asking /history when that message was missed.
END_WAIT_S = 1.0
HISTORY_WAIT_S = 5.0
# How long a cancelled job waits for its in-flight POST /prompt, to learn whether it was queued.
SUBMIT_WAIT_S = 10.0


def png_size(data: bytes) -> tuple[int | None, int | None]:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    return None, None


class ComfyUIEngine:
    name = "comfyui"

    def __init__(
        self,
        base_url: str,
        models: dict[str, str] | None = None,
        *,
        templates_dir: str | None = None,
        slots: int = 1,
        timeout_s: float = 600.0,
        ws_ping_s: float = 10.0,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        """`models` maps a catalog model to the checkpoint file the server holds. Without it: the
        built-in models (MODEL_DEFAULTS) and every template in `templates_dir`.

        `ws_ping_s` is the websocket keepalive: a ComfyUI that stops answering pings (a dead host
        sends nothing at all) is found out within twice that.
        """
        self.base_url = base_url.rstrip("/")
        self.templates, own = load_templates(templates_dir)
        if models is None:
            models = {m: d["checkpoint"] for m, d in MODEL_DEFAULTS.items()}
            for model in sorted(own - set(models)):
                if "checkpoint" in placeholders(self.templates[model]):
                    raise ValueError(
                        f"the ComfyUI template {model}.json asks for {{{{checkpoint}}}}: name its file "
                        f"in TESSERA_COMFYUI_MODELS ({model}=<file>) or write it into the template"
                    )
                models[model] = ""
        missing = [m for m in models if m not in self.templates]
        if missing:
            raise ValueError(f"no ComfyUI workflow template for {', '.join(missing)}")
        self.checkpoints = dict(models)
        self.models = tuple(models)
        self.video_models = {m for m in models if is_video(self.templates[m])}
        self.capabilities = tuple(sorted({"video" if m in self.video_models else "image" for m in models}))
        # The model of the last prompt that succeeded, whose checkpoint ComfyUI most likely still
        # holds: what the worker reports as loaded, for the scheduler's model affinity. Forgotten
        # when ComfyUI cannot be reached or has restarted.
        self.loaded: tuple[str, ...] = ()
        self._loaded_by: str | None = None  # the prompt that loaded it, to tell a restart by /history
        self._last_number = -1.0  # ComfyUI numbers prompts from 0 again after a restart
        self.slots = slots
        self.ws_ping_s = ws_ping_s
        self.probe_timeout_s = probe_timeout_s
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=httpx.Timeout(timeout_s, connect=10.0))

    async def close(self) -> None:
        await self._client.aclose()

    # --- discovery and health --------------------------------------------------------------------

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

    async def probe(self) -> bool:
        """Whether ComfyUI answers `/system_stats` within `probe_timeout_s`; never raises.

        A ComfyUI that does not answer, or that answers but no longer knows the prompt that
        loaded our model (it restarted), holds no model of ours: `loaded` is forgotten.
        """
        try:
            async with asyncio.timeout(self.probe_timeout_s):
                if (await self._client.get("/system_stats")).status_code != 200:
                    self._forget()
                    return False
                if self._loaded_by is not None and not (await self._client.get(f"/history/{self._loaded_by}")).json():
                    self._forget()
                return True
        except Exception:  # down, hung, or answering nonsense: all the same to the worker
            self._forget()
            return False

    def _forget(self) -> None:
        self.loaded, self._loaded_by = (), None

    # --- a job -----------------------------------------------------------------------------------

    def workflow(self, job: JobInput) -> dict[str, Any]:
        values = placeholder_values(job, self.checkpoints, video=job.model in self.video_models)
        workflow: dict[str, Any] = fill(self.templates[job.model], values)
        return workflow

    async def run(self, job: JobInput, ctx: JobContext) -> list[Output]:
        workflow = self.workflow(job)
        client_id = uuid.uuid4().hex
        # Chosen here, not by ComfyUI: a job cancelled while POST /prompt is in flight still knows
        # which prompt to withdraw.
        prompt_id = str(uuid.uuid4())
        submit: asyncio.Task[httpx.Response] | None = None
        try:
            async with self._connect(client_id) as ws:  # before the prompt: no message is missed
                body = {"prompt": workflow, "client_id": client_id, "prompt_id": prompt_id}
                submit = asyncio.create_task(self._client.post("/prompt", json=body))
                response = await asyncio.shield(submit)
                if response.status_code != 200:
                    raise _prompt_error(response)
                self._note_number(response.json().get("number"))
                await self._follow(ws, prompt_id, ctx)
            outputs = await self._outputs(prompt_id, video_seconds(workflow))
        except asyncio.CancelledError:
            await asyncio.shield(self._withdraw(prompt_id, submit))
            raise
        except EngineError as exc:
            if exc.code == "ENGINE_DISCONNECTED":  # ComfyUI may live on and run it: take it back
                self._forget()
                await asyncio.shield(self._withdraw(prompt_id, submit))
            raise
        except (httpx.TransportError, OSError, WebSocketException, TimeoutError) as exc:
            self._forget()
            await asyncio.shield(self._withdraw(prompt_id, submit))
            reached = submit is not None and not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
            raise EngineError(
                "ENGINE_DISCONNECTED" if reached else "ENGINE_UNAVAILABLE", f"ComfyUI at {self.base_url}: {exc!r}"
            ) from exc
        self.loaded, self._loaded_by = (job.model,), prompt_id
        return outputs

    def _connect(self, client_id: str) -> Any:
        ws_url = self.base_url.replace("http", "ws", 1) + f"/ws?clientId={client_id}"
        return connect(
            ws_url,
            max_size=None,
            open_timeout=10,
            ping_interval=self.ws_ping_s,
            ping_timeout=self.ws_ping_s,
            close_timeout=self.ws_ping_s,
        )

    def _note_number(self, number: Any) -> None:
        """ComfyUI counts prompts from 0 after a restart: a smaller number means our model is gone."""
        if isinstance(number, int | float) and number >= 0:
            if number < self._last_number:
                self._forget()
            self._last_number = float(number)

    async def _follow(self, ws: ClientConnection, prompt_id: str, ctx: JobContext) -> None:
        """Read the websocket until ComfyUI ends this prompt; other prompts' messages are skipped."""
        succeeded = False
        while True:
            try:
                if succeeded:  # `executing {node: null}` is due; /history is asked anyway if it never comes
                    raw = await asyncio.wait_for(ws.recv(), END_WAIT_S)
                else:
                    raw = await ws.recv()
            except (TimeoutError, ConnectionClosed) as exc:
                if succeeded:
                    return
                raise EngineError(
                    "ENGINE_DISCONNECTED",
                    f"ComfyUI at {self.base_url} dropped the websocket before the prompt finished: {exc!r}",
                ) from exc
            if isinstance(raw, bytes):  # a preview image: not an output
                continue
            message = json.loads(raw)
            kind, data = message.get("type"), message.get("data") or {}
            if data.get("prompt_id") != prompt_id:
                continue
            if kind == "progress" and data.get("max"):
                await ctx.progress(data["value"] / data["max"], f"step {data['value']} of {data['max']}", None)
            elif kind == "execution_success":
                succeeded = True
            elif kind == "executing" and data.get("node") is None:
                return
            elif kind == "execution_error":
                raise EngineError("ENGINE_ERROR", _execution_error(data))
            elif kind == "execution_interrupted":
                raise EngineError("ENGINE_INTERRUPTED", "ComfyUI interrupted the prompt")

    async def _history(self, prompt_id: str) -> dict[str, Any]:
        """The prompt's /history entry, asked again briefly while ComfyUI has not written it yet."""
        delay, waited = 0.02, 0.0
        while True:
            entry = (await self._client.get(f"/history/{prompt_id}")).json().get(prompt_id)
            if entry:
                return dict(entry)
            if waited >= HISTORY_WAIT_S:
                raise EngineError("ENGINE_ERROR", f"ComfyUI ended prompt {prompt_id} but /history has no entry for it")
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.5)

    async def _outputs(self, prompt_id: str, video_seconds: float | None = None) -> list[Output]:
        history = await self._history(prompt_id)
        status = history.get("status") or {}
        if status.get("status_str") == "error":
            failure = next((m[1] for m in status.get("messages") or [] if m[0] == "execution_error"), None)
            if failure is None:
                raise EngineError("ENGINE_INTERRUPTED", "ComfyUI interrupted the prompt")
            raise EngineError("ENGINE_ERROR", _execution_error(failure))
        outputs = []
        for node_output in (history.get("outputs") or {}).values():
            for image in node_output.get("images") or []:
                if image.get("type") != "output":
                    continue
                response = await self._client.get(
                    "/view",
                    params={"filename": image["filename"], "subfolder": image.get("subfolder", ""), "type": "output"},
                )
                if response.status_code != 200:
                    raise EngineError("ENGINE_ERROR", f"ComfyUI could not serve {image['filename']}")
                if image["filename"].endswith(".webp") and node_output.get("animated", [True])[0]:
                    outputs.append(
                        Output(
                            kind="video",
                            format="webp",
                            content_type="image/webp",
                            data=response.content,
                            duration_seconds=video_seconds,
                            usage={"duration_seconds": video_seconds} if video_seconds else {},
                        )
                    )
                    continue
                width, height = png_size(response.content)
                outputs.append(
                    Output(
                        kind="image",
                        format="png",
                        content_type="image/png",
                        data=response.content,
                        width=width,
                        height=height,
                    )
                )
        if not outputs:
            raise EngineError("ENGINE_ERROR", "ComfyUI finished the prompt without an output image")
        return outputs

    async def _withdraw(self, prompt_id: str, submit: asyncio.Task[httpx.Response] | None) -> None:
        """Take our prompt back, wherever it is, and touch no other.

        Waits for POST /prompt first: until it answers, ComfyUI may still queue the prompt, and a
        delete sent before that would miss it. Deleting from the queue then interrupting leaves no
        gap: a prompt that starts between the two is running, so the interrupt stops it.
        """
        if submit is None:  # never sent
            return
        if not submit.done():
            await asyncio.wait({submit}, timeout=SUBMIT_WAIT_S)
        if submit.done() and not submit.cancelled():
            submit.exception()  # retrieved: a POST that failed is reported by the caller, not the loop
        with contextlib.suppress(httpx.HTTPError):
            await self._client.post("/queue", json={"delete": [prompt_id]}, timeout=self.probe_timeout_s)
        with contextlib.suppress(httpx.HTTPError):
            await self._client.post("/interrupt", json={"prompt_id": prompt_id}, timeout=self.probe_timeout_s)


def _execution_error(data: dict[str, Any]) -> str:
    return (
        f"ComfyUI node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_type')}: "
        f"{str(data.get('exception_message') or '').strip()}"
    )


def _prompt_error(response: httpx.Response) -> EngineError:
    """ComfyUI refuses a workflow with 400 and {"error": {type, message, details}, "node_errors": {...}}."""
    try:
        body = response.json()
        error = body.get("error") or {}
        if isinstance(error, str):
            detail = error
        else:
            detail = ": ".join(str(p) for p in (error.get("message") or error.get("type"), error.get("details")) if p)
        for node_id, node in (body.get("node_errors") or {}).items():
            reasons = "; ".join(
                ": ".join(str(p) for p in (e.get("message"), e.get("details")) if p) for e in node.get("errors", [])
            )
            detail += f"; node {node_id} ({node.get('class_type')}): {reasons}"
    except (ValueError, AttributeError):
        detail = response.text[:300]
    return EngineError(
        "ENGINE_REJECTED" if response.status_code < 500 else "ENGINE_ERROR", f"ComfyUI refused the workflow: {detail}"
    )
