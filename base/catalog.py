"""The model catalog: what can be asked for, which engine runs it, and what it costs.

Shared by the scheduler (which admits, prices and charges) and the gateway (which lists models and
validates requests). Costs are in tokens; 1 token is one 1024x1024 image (the seeds' unit). Each
model carries its own `Pricing`; an operator can change any model's pricing or timings with a
JSON file named by TESSERA_CATALOG_FILE (docs/plans.md). A service loads its `Catalog` once, from
its settings (`Catalog.load(settings.catalog_file)`), and passes it down: nothing here reads the
environment.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

# One model's units, price and parameters live in base.pricing; they are part of this module's API.
from base.pricing import MEGAPIXEL, Model, ParamError, Pricing, QuoteRefused

__all__ = [
    "CAPABILITIES",
    "CAPABILITY_ALIASES",
    "MEGAPIXEL",
    "USAGE_GROUP",
    "Catalog",
    "CatalogOverride",
    "Model",
    "ParamError",
    "Pricing",
    "Quote",
    "QuoteRefused",
]

# Capability names. `echo` is diagnostic: it returns its input, for benchmarks and health checks.
CAPABILITIES = ("image", "video", "text", "tts", "stt", "echo")

# Other names a request may use for a capability: the product documents' (seeds') `audio` is
# speech synthesis. The gateway turns an alias into its capability before anything else reads it.
CAPABILITY_ALIASES = {"audio": "tts"}

# The seeds' usage_daily columns group capabilities so: tokens_<group>.
USAGE_GROUP = {"image": "image", "video": "video", "text": "text", "echo": "text", "tts": "audio", "stt": "audio"}

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
        name="diagnostic-image",
        capability="image",
        engine="diagnostic-image",
        diagnostic=True,
        timeout_seconds=30,
        typical_seconds=0.1,
        pricing=Pricing(rate=0.01),
        description="Diagnostic, no GPU: PNGs of the asked size showing the prompt, the size and the seed "
        "(the same seed, the same bytes); 0.01 token per 1024x1024 image.",
    ),
    Model(
        name="diagnostic-video",
        capability="video",
        engine="diagnostic-video",
        diagnostic=True,
        timeout_seconds=60,
        typical_seconds=1,
        default_width=768,
        default_height=512,
        pricing=Pricing(rate=0.01),
        description="Diagnostic, no GPU: an animated WebP of the asked size and length whose frames show the "
        "prompt, the size, the seed and the time; 0.01 token per second at 1024x576.",
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
        name="piper-joe",
        capability="tts",
        engine="piper",
        timeout_seconds=120,
        typical_seconds=1.0,
        pricing=Pricing(rate=1.0),
        description='Offline neural text-to-speech with Piper, US English voice "joe" (WAV, 22.05 kHz mono); '
        "1 token per 1000 characters.",
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
    "tts": "piper-joe",
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
