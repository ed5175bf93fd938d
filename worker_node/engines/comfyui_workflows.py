"""ComfyUI workflow templates: loading them, filling their placeholders from a job's params, and
reading what a workflow renders.

Workflows are ComfyUI "API format" JSON files with placeholders: `"{{prompt}}"`,
`"{{negative_prompt}}"`, `"{{width}}"`, `"{{height}}"`, `"{{batch_size}}"`, `"{{steps}}"`,
`"{{cfg}}"`, `"{{seed}}"` and `"{{checkpoint}}"`. A placeholder is a whole JSON string, and it is
replaced by a value of the right type. Built-in templates live in `comfyui_templates/` (sdxl,
flux-schnell, flux-dev, and ltx-video, which also takes `"{{fps}}"` and `"{{frames}}"` and saves
an animated WebP). An operator's directory (TESSERA_COMFYUI_TEMPLATES) adds templates or
overrides these; without an explicit model list, each of its templates is a model.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker_node.engines.base import EngineError, JobInput

BUILT_IN_TEMPLATES = Path(__file__).with_name("comfyui_templates")

# Defaults per model: steps, cfg (guidance for flux-dev), checkpoint file name on the server.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "sdxl": {"steps": 25, "cfg": 7.0, "checkpoint": "sd_xl_base_1.0.safetensors"},
    "flux-schnell": {"steps": 4, "cfg": 1.0, "checkpoint": "flux1-schnell-fp8.safetensors"},
    "flux-dev": {"steps": 20, "cfg": 3.5, "checkpoint": "flux1-dev-fp8.safetensors"},
    "ltx-video": {"steps": 30, "cfg": 3.0, "checkpoint": "ltx-video-2b-v0.9.5.safetensors", "fps": 24},
}
VIDEO_SAVERS = {"SaveAnimatedWEBP", "SaveWEBM", "SaveVideo"}


def load_templates(extra_dir: str | None = None) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """Every template by model name, and the names the operator's directory brought."""
    templates = {p.stem: json.loads(p.read_text()) for p in sorted(BUILT_IN_TEMPLATES.glob("*.json"))}
    own = {p.stem: json.loads(p.read_text()) for p in sorted(Path(extra_dir).glob("*.json"))} if extra_dir else {}
    templates.update(own)
    return templates, set(own)


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


def placeholders(template: Any) -> set[str]:
    if isinstance(template, dict):
        return set().union(*(placeholders(v) for v in template.values()))
    if isinstance(template, list):
        return set().union(*(placeholders(v) for v in template))
    if isinstance(template, str) and template.startswith("{{") and template.endswith("}}"):
        return {template[2:-2]}
    return set()


def is_video(template: dict[str, Any]) -> bool:
    return any(isinstance(n, dict) and n.get("class_type") in VIDEO_SAVERS for n in template.values())


def placeholder_values(job: JobInput, checkpoints: Mapping[str, str], *, video: bool) -> dict[str, Any]:
    """What the job's placeholders are filled with: its params, checked, else the model's defaults."""
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
    fps = int(defaults.get("fps", 24))
    seconds = float(params.get("duration_seconds", 4.0))
    side = 768 if video else 1024
    values = {
        "prompt": str(params.get("prompt", "")),
        "negative_prompt": str(params.get("negative_prompt", "")),
        "width": int(params.get("width", side)),
        "height": int(params.get("height", 512 if video else side)),
        "batch_size": int(params.get("batch_size", 1)),
        "steps": steps,
        "cfg": float(cfg),
        "seed": seed,
        "checkpoint": checkpoints[job.model],
        "fps": fps,
        # LTX-Video renders 8k + 1 frames.
        "frames": max(9, round(seconds * fps / 8) * 8 + 1),
    }
    return values


def video_seconds(workflow: dict[str, Any]) -> float | None:
    """The length of the video a workflow renders: frames / fps, from its latent and its saver."""
    frames = next((n["inputs"].get("length") for n in workflow.values() if "length" in n.get("inputs", {})), None)
    fps = next(
        (
            n["inputs"].get("fps")
            for n in workflow.values()
            if n.get("class_type", "").startswith("Save") and "fps" in n.get("inputs", {})
        ),
        None,
    )
    if isinstance(frames, int) and isinstance(fps, int | float) and fps > 0:
        return round(frames / fps, 3)
    return None
