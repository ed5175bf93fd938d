"""The model catalog: what can be asked for, which engine runs it, and what it costs.

Shared by the scheduler (which admits, prices and charges) and the gateway (which lists models and
validates requests). Costs are in tokens; 1 token is one 1024x1024 image (the seeds' unit). Each
model carries its own `Pricing`; an operator can change any model's pricing or timings with a
JSON file named by TESSERA_CATALOG_FILE (docs/plans.md).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import msgspec

from base.errors import TesseraError

# Capability names. `echo` is diagnostic: it returns its input, for benchmarks and health checks.
CAPABILITIES = ("image", "video", "text", "tts", "stt", "echo")

# The seeds' usage_daily columns group capabilities so: tokens_<group>.
USAGE_GROUP = {"image": "image", "video": "video", "text": "text", "echo": "text", "tts": "audio", "stt": "audio"}

MEGAPIXEL = 1024 * 1024


class ParamError(TesseraError, ValueError):
    """A parameter the model cannot take; `code` is the API's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Pricing(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Tokens = base + rate * units, rounded up to 0.01.

    The unit depends on the capability: image = megapixel (1024x1024) per image, times the batch;
    video = second at 1024x576; text = 1000 generated LLM tokens; tts = 1000 characters;
    stt = minute of audio; echo = nothing (free).
    """

    base: float = 0.0
    rate: float = 0.0


class Model(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    capability: str
    engine: str
    description: str
    diagnostic: bool = False
    # Gated models are sold by plan (a plan's allowed_models); the others are open to every plan.
    gated: bool = False
    timeout_seconds: float = 300.0
    typical_seconds: float = 5.0  # the estimate until executions have been measured
    pricing: Pricing = Pricing()
    # Defaults for the parameters the price depends on.
    default_width: int = 1024
    default_height: int = 1024
    default_duration_seconds: float = 4.0
    default_max_tokens: int = 256
    max_batch: int = 4

    # --- units -----------------------------------------------------------------------------------

    def size(self, params: dict[str, Any]) -> tuple[int, int]:
        """(width, height) asked for; (0, 0) for capabilities without a picture."""
        if self.capability not in ("image", "video"):
            return 0, 0
        return (_int(params, "width", self.default_width, 64, 16384),
                _int(params, "height", self.default_height, 64, 16384))

    def max_units(self, params: dict[str, Any]) -> float:
        """The most units this request can use: what admission reserves."""
        match self.capability:
            case "image":
                width, height = self.size(params)
                return width * height / MEGAPIXEL * _int(params, "batch_size", 1, 1, self.max_batch)
            case "video":
                width, height = self.size(params)
                seconds = _float(params, "duration_seconds", self.default_duration_seconds, 0.5, 60)
                return seconds * width * height / (1024 * 576)
            case "text":
                return _int(params, "max_tokens", self.default_max_tokens, 1, 32768) / 1000
            case "tts":
                return len(str(params.get("prompt", ""))) / 1000
            case "stt":
                return _input_seconds(params.get("input")) / 60
            case _:
                return 0.0

    def actual_units(self, params: dict[str, Any], usage: dict[str, float]) -> float:
        """Units really used, from what the worker measured; never more than reserved."""
        reserved = self.max_units(params)
        match self.capability:
            case "text" if "output_tokens" in usage:
                return min(reserved, max(0.0, usage["output_tokens"]) / 1000)
            case "stt" if "audio_seconds" in usage:
                return min(reserved, max(0.0, usage["audio_seconds"]) / 60)
            case "video" if "duration_seconds" in usage:
                width, height = self.size(params)
                return min(reserved, max(0.0, usage["duration_seconds"]) * width * height / (1024 * 576))
            case _:
                return reserved

    # --- tokens ----------------------------------------------------------------------------------

    def _tokens(self, units: float) -> float:
        if self.pricing.base == 0 and self.pricing.rate == 0:
            return 0.0
        return math.ceil(round((self.pricing.base + self.pricing.rate * units) * 100, 6)) / 100

    def cost(self, params: dict[str, Any]) -> float:
        """The most this request can cost: reserved at admission, shown as cost_tokens at submit."""
        return self._tokens(self.max_units(params))

    def actual_cost(self, params: dict[str, Any], usage: dict[str, float]) -> float:
        """What a completed job is charged: its measured use, capped by its reservation."""
        return min(self.cost(params), self._tokens(self.actual_units(params, usage)))

    def check(self, params: dict[str, Any]) -> None:
        """Raise ParamError for a parameter this model cannot take: at submit, not at the worker."""
        self.max_units(params)
        match self.capability:
            case "echo":
                _float(params, "delay_seconds", 0.0, 0.0, 60.0)
            case "image" | "video":
                _int(params, "steps", 1, 1, 150)
                _float(params, "cfg", 0.0, 0.0, 30.0)
                _int(params, "seed", 0, 0, 2**63 - 1)


def _input_seconds(reference: object) -> float:
    """How long the input to transcribe can be, from what the platform measured: its length for a
    WAV, else at most what its size allows at 8 kbit/s (no speech codec goes lower). A client's own
    `duration_seconds` is not read: it would set its price (issue 11)."""
    facts = reference if isinstance(reference, dict) else {}
    seconds, size = facts.get("duration_seconds"), facts.get("size_bytes")
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        seconds = size / 1000 if isinstance(size, int) and not isinstance(size, bool) else 4 * 3600
    return max(0.1, min(float(seconds), 4 * 3600))


def _number(params: dict[str, Any], name: str, default: float, low: float, high: float, integer: bool) -> float:
    value = params.get(name, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not float(value).is_integer()):
        kind = "an integer" if integer else "a number"
        raise ParamError("VALIDATION_ERROR", f"params.{name} must be {kind}")
    if not low <= value <= high:
        raise ParamError("VALIDATION_ERROR", f"params.{name} must be between {low:g} and {high:g}")
    return value


def _int(params: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    return int(_number(params, name, default, low, high, integer=True))


def _float(params: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    return float(_number(params, name, default, low, high, integer=False))


_BUILTIN = (
    Model(name="echo", capability="echo", engine="echo", diagnostic=True, timeout_seconds=10, typical_seconds=0.001,
          description="Diagnostic: returns the prompt as a text artifact. Free."),
    Model(name="sdxl", capability="image", engine="comfyui", gated=True, timeout_seconds=300, typical_seconds=20,
          pricing=Pricing(rate=1.0), description="Stable Diffusion XL through ComfyUI; 1 token per 1024x1024 image."),
    Model(name="flux-schnell", capability="image", engine="comfyui", gated=True, timeout_seconds=300,
          typical_seconds=8, pricing=Pricing(rate=1.0),
          description="FLUX.1 [schnell] through ComfyUI (4 steps); 1 token per 1024x1024 image."),
    Model(name="flux-dev", capability="image", engine="comfyui", gated=True, timeout_seconds=600, typical_seconds=45,
          pricing=Pricing(rate=2.0), description="FLUX.1 [dev] through ComfyUI; 2 tokens per 1024x1024 image."),
    Model(name="ltx-video", capability="video", engine="comfyui", gated=True, timeout_seconds=1800,
          typical_seconds=120, default_width=768, default_height=512, pricing=Pricing(rate=2.0),
          description="LTX-Video text-to-video through ComfyUI; 2 tokens per second at 1024x576."),
    Model(name="gemma3-270m", capability="text", engine="llama-cpp", timeout_seconds=300, typical_seconds=6,
          pricing=Pricing(base=0.01, rate=0.1),
          description="Gemma 3 270M (offline, CPU, llama.cpp); 0.01 + 0.1 token per 1000 generated tokens."),
    Model(name="espeak-ng", capability="tts", engine="espeak", timeout_seconds=60, typical_seconds=0.2,
          pricing=Pricing(rate=1.0),
          description="Offline text-to-speech with eSpeak NG (WAV, 22.05 kHz mono); 1 token per 1000 characters."),
    Model(name="pocketsphinx-en", capability="stt", engine="pocketsphinx", timeout_seconds=600, typical_seconds=5,
          pricing=Pricing(rate=0.1),
          description="Offline English speech-to-text with PocketSphinx; 0.1 token per minute of audio."),
)

DEFAULT_MODEL: dict[str, str] = {"echo": "echo", "image": "sdxl", "video": "ltx-video", "text": "gemma3-270m",
                                 "tts": "espeak-ng", "stt": "pocketsphinx-en"}


class CatalogOverride(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One entry of TESSERA_CATALOG_FILE: a new model, or the fields of a built-in to change."""

    capability: str | None = None
    engine: str | None = None
    description: str | None = None
    gated: bool | None = None
    timeout_seconds: float | None = None
    typical_seconds: float | None = None
    pricing: Pricing | None = None
    default: bool = False  # make it the capability's default model


def load_catalog(path: str | None = None) -> tuple[dict[str, Model], dict[str, str]]:
    """The built-in models with the operator's file applied (models and default models)."""
    models = {m.name: m for m in _BUILTIN}
    defaults = dict(DEFAULT_MODEL)
    path = path if path is not None else os.environ.get("TESSERA_CATALOG_FILE")
    if not path:
        return models, defaults
    entries = msgspec.json.decode(Path(path).read_bytes(), type=dict[str, CatalogOverride])
    for name, entry in entries.items():
        changes = {k: v for k, v in msgspec.structs.asdict(entry).items() if v is not None and k != "default"}
        if name in models:
            models[name] = msgspec.structs.replace(models[name], **changes)
        else:
            missing = {"capability", "engine", "description"} - set(changes)
            if missing:
                raise ValueError(f"{path}: new model {name!r} needs {', '.join(sorted(missing))}")
            models[name] = Model(name=name, **changes)
        if models[name].capability not in CAPABILITIES:
            raise ValueError(f"{path}: model {name!r} has unknown capability {models[name].capability!r}")
        if entry.default:
            defaults[models[name].capability] = name
    return models, defaults


CATALOG, DEFAULT_MODEL = load_catalog()


def resolve(capability: str, model: str | None) -> Model | None:
    """The catalog model for this request, or None when the pair is not served."""
    name = model or DEFAULT_MODEL.get(capability)
    found = CATALOG.get(name) if name else None
    if found is None or found.capability != capability:
        return None
    return found
