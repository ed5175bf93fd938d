"""The model catalog: what can be asked for, which engine runs it, and what it costs.

Shared by the scheduler (which decides) and the gateway (which lists models). Costs are in
tokens; 1 token is one 1024x1024 image (the seeds' unit).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

# Capability names. `echo` is diagnostic: it returns its input, for benchmarks and health checks.
CAPABILITIES = ("image", "video", "text", "tts", "stt", "echo")

# The seeds' usage_daily columns group capabilities so: tokens_<group>.
USAGE_GROUP = {"image": "image", "video": "video", "text": "text", "echo": "text", "tts": "audio", "stt": "audio"}


class Model(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    capability: str
    engine: str
    description: str
    diagnostic: bool = False
    timeout_seconds: float = 300.0
    typical_seconds: float = 5.0
    # Cost: base + per_unit * units(params), rounded up to 0.01 token.
    base_tokens: float = 0.0
    tokens_per_unit: float = 0.0
    unit: str | None = None  # "character", ...

    def cost(self, params: dict[str, Any]) -> float:
        units = 0.0
        if self.unit == "character":
            units = len(str(params.get("prompt", "")))
        return math.ceil((self.base_tokens + self.tokens_per_unit * units) * 100) / 100


CATALOG: dict[str, Model] = {
    m.name: m
    for m in (
        Model(name="echo", capability="echo", engine="echo", diagnostic=True, timeout_seconds=10,
              typical_seconds=0.001, description="Diagnostic: returns the prompt as a text artifact. Free."),
        Model(name="espeak-ng", capability="tts", engine="espeak", timeout_seconds=60, typical_seconds=0.2,
              tokens_per_unit=0.001, unit="character",
              description="Offline text-to-speech with eSpeak NG (WAV, 22.05 kHz mono); 1 token per 1000 characters."),
    )
}

DEFAULT_MODEL: dict[str, str] = {"echo": "echo", "tts": "espeak-ng"}


def resolve(capability: str, model: str | None) -> Model | None:
    """The catalog model for this request, or None when the pair is not served."""
    name = model or DEFAULT_MODEL.get(capability)
    found = CATALOG.get(name) if name else None
    if found is None or found.capability != capability:
        return None
    return found
