"""One model of the catalog: the units a request of it uses, what those cost, and the parameters it
takes. The set of models, their defaults and an operator's changes are `base.catalog`, which
re-exports these names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgspec

from base.errors import TesseraError

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
