"""The model catalog: what can be asked for, which engine runs it, and what it costs.

Shared by the scheduler (which admits, prices and charges) and the gateway (which lists models and
validates requests). Costs are in tokens; 1 token is one 1024x1024 image (the seeds' unit). Each
model carries its own `Pricing`; an operator can change any model's pricing or timings with a
JSON file named by TESSERA_CATALOG_FILE (docs/plans.md). A service loads its `Catalog` once, from
its settings (`Catalog.load(settings.catalog_file)`), and passes it down: nothing here reads the
environment.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from base.errors import TesseraError

# Capability names. `echo` is diagnostic: it returns its input, for benchmarks and health checks.
CAPABILITIES = ("image", "video", "text", "tts", "stt", "echo")

# The seeds' usage_daily columns group capabilities so: tokens_<group>.
USAGE_GROUP = {"image": "image", "video": "video", "text": "text", "echo": "text", "tts": "audio", "stt": "audio"}

MEGAPIXEL = 1024 * 1024


class QuoteRefused(TesseraError, ValueError):
    """A request the catalog cannot price: an unknown capability or model, or a parameter the model
    cannot take. `code` is the API's error code (the scheduler's refusal code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ParamError(QuoteRefused):
    """A parameter the model cannot take; `code` is the API's error code."""


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

    def size(self, params: Mapping[str, Any]) -> tuple[int, int]:
        """(width, height) asked for; (0, 0) for capabilities without a picture."""
        if self.capability not in ("image", "video"):
            return 0, 0
        return (
            _int(params, "width", self.default_width, 64, 16384),
            _int(params, "height", self.default_height, 64, 16384),
        )

    def max_units(self, params: Mapping[str, Any]) -> float:
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

    def actual_units(self, params: Mapping[str, Any], usage: dict[str, float]) -> float:
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

    def cost(self, params: Mapping[str, Any]) -> float:
        """The most this request can cost: reserved at admission, shown as cost_tokens at submit."""
        return self._tokens(self.max_units(params))

    def actual_cost(self, params: Mapping[str, Any], usage: dict[str, float]) -> float:
        """What a completed job is charged: its measured use, capped by its reservation."""
        return min(self.cost(params), self._tokens(self.actual_units(params, usage)))

    def check(self, params: Mapping[str, Any]) -> None:
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


def _number(params: Mapping[str, Any], name: str, default: float, low: float, high: float, integer: bool) -> float:
    value = params.get(name, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not float(value).is_integer()):
        kind = "an integer" if integer else "a number"
        raise ParamError("VALIDATION_ERROR", f"params.{name} must be {kind}")
    if not low <= value <= high:
        raise ParamError("VALIDATION_ERROR", f"params.{name} must be between {low:g} and {high:g}")
    return value


def _int(params: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    return int(_number(params, name, default, low, high, integer=True))


def _float(params: Mapping[str, Any], name: str, default: float, low: float, high: float) -> float:
    return float(_number(params, name, default, low, high, integer=False))


_BUILTIN = (
    Model(
        name="echo",
        capability="echo",
        engine="echo",
        diagnostic=True,
        timeout_seconds=10,
        typical_seconds=0.001,
        description="Diagnostic: returns the prompt as a text artifact. Free.",
    ),
    Model(
        name="sdxl",
        capability="image",
        engine="comfyui",
        gated=True,
        timeout_seconds=300,
        typical_seconds=20,
        pricing=Pricing(rate=1.0),
        description="Stable Diffusion XL through ComfyUI; 1 token per 1024x1024 image.",
    ),
    Model(
        name="flux-schnell",
        capability="image",
        engine="comfyui",
        gated=True,
        timeout_seconds=300,
        typical_seconds=8,
        pricing=Pricing(rate=1.0),
        description="FLUX.1 [schnell] through ComfyUI (4 steps); 1 token per 1024x1024 image.",
    ),
    Model(
        name="flux-dev",
        capability="image",
        engine="comfyui",
        gated=True,
        timeout_seconds=600,
        typical_seconds=45,
        pricing=Pricing(rate=2.0),
        description="FLUX.1 [dev] through ComfyUI; 2 tokens per 1024x1024 image.",
    ),
    Model(
        name="ltx-video",
        capability="video",
        engine="comfyui",
        gated=True,
        timeout_seconds=1800,
        typical_seconds=120,
        default_width=768,
        default_height=512,
        pricing=Pricing(rate=2.0),
        description="LTX-Video text-to-video through ComfyUI; 2 tokens per second at 1024x576.",
    ),
    Model(
        name="gemma3-270m",
        capability="text",
        engine="llama-cpp",
        timeout_seconds=300,
        typical_seconds=6,
        pricing=Pricing(base=0.01, rate=0.1),
        description="Gemma 3 270M (offline, CPU, llama.cpp); 0.01 + 0.1 token per 1000 generated tokens.",
    ),
    Model(
        name="espeak-ng",
        capability="tts",
        engine="espeak",
        timeout_seconds=60,
        typical_seconds=0.2,
        pricing=Pricing(rate=1.0),
        description="Offline text-to-speech with eSpeak NG (WAV, 22.05 kHz mono); 1 token per 1000 characters.",
    ),
    Model(
        name="pocketsphinx-en",
        capability="stt",
        engine="pocketsphinx",
        timeout_seconds=600,
        typical_seconds=5,
        pricing=Pricing(rate=0.1),
        description="Offline English speech-to-text with PocketSphinx; 0.1 token per minute of audio.",
    ),
)

_BUILTIN_DEFAULTS: dict[str, str] = {
    "echo": "echo",
    "image": "sdxl",
    "video": "ltx-video",
    "text": "gemma3-270m",
    "tts": "espeak-ng",
    "stt": "pocketsphinx-en",
}


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


@dataclass(frozen=True, kw_only=True)
class Quote:
    """What the catalog says of one request: the model that serves it, its size and its price.

    The params it was made from have been validated; `cost` is the most the request can cost (what
    admission reserves and the submit answer shows as cost_tokens).
    """

    model: Model
    params: Mapping[str, Any]
    width: int  # 0 for capabilities without a picture
    height: int
    cost: float

    @property
    def side(self) -> int:
        """The longer side, what a plan's and a worker's max_resolution are compared with."""
        return max(self.width, self.height)


class Catalog:
    """The models a deployment serves and the default model of each capability.

    Built once per process by `Catalog.load` (the built-in models with the operator's file applied)
    and read-only from then on.
    """

    def __init__(self, models: Mapping[str, Model], defaults: Mapping[str, str]) -> None:
        self.models: Mapping[str, Model] = dict(models)
        self.defaults: Mapping[str, str] = dict(defaults)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Catalog:
        """The built-in models, with the JSON file at `path` (TESSERA_CATALOG_FILE) applied when given."""
        models = {m.name: m for m in _BUILTIN}
        defaults = dict(_BUILTIN_DEFAULTS)
        if not path:
            return cls(models, defaults)
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
        return cls(models, defaults)

    # --- reading ---------------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self.models

    def __getitem__(self, name: str) -> Model:
        return self.models[name]

    def __iter__(self) -> Iterator[Model]:
        return iter(self.models.values())

    def get(self, name: str) -> Model | None:
        return self.models.get(name)

    def is_default(self, model: Model) -> bool:
        return self.defaults.get(model.capability) == model.name

    def typical_seconds(self, name: str, measured: float | None = None) -> float:
        """How long a job of this model takes: what was measured when there is a measurement, else the
        catalog's guess (5 s for a model the catalog does not know)."""
        if measured is not None:
            return measured
        model = self.models.get(name)
        return model.typical_seconds if model else 5.0

    # --- quoting ---------------------------------------------------------------------------------

    def check_capability(self, capability: str) -> None:
        """Raise QuoteRefused (UNKNOWN_CAPABILITY) unless `capability` is one Tessera knows."""
        if capability not in CAPABILITIES:
            raise QuoteRefused(
                "UNKNOWN_CAPABILITY", f"unknown capability {capability!r}; known: {', '.join(CAPABILITIES)}"
            )

    def model_for(self, capability: str, model: str | None) -> Model:
        """The model that serves this request (the capability's default without a name), or raise
        QuoteRefused with UNKNOWN_CAPABILITY or UNKNOWN_MODEL."""
        self.check_capability(capability)
        name = model or self.defaults.get(capability)
        found = self.models.get(name) if name else None
        if found is None or found.capability != capability:
            raise QuoteRefused(
                "UNKNOWN_MODEL",
                f"model {model!r} does not serve capability {capability!r}"
                if model
                else f"no model serves capability {capability!r}",
            )
        return found

    def quote(self, capability: str, model: str | None, params: Mapping[str, Any]) -> Quote:
        """The model, size and price of a request, its params validated; raises QuoteRefused (with the
        refusal's code) for a request that cannot be served as asked."""
        found = self.model_for(capability, model)
        found.check(params)
        width, height = found.size(params)
        return Quote(model=found, params=params, width=width, height=height, cost=found.cost(params))
