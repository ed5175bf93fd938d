"""A user's request, from a chat message or a slash command, as the API's `params`.

Telegram users write options into the prompt, as they do for other image bots:

    a lighthouse at dusk --ar 16:9 --steps 30 --neg blurry, text --seed 7

`parse_text` takes them out (`--` or the em dash a phone's keyboard makes of it), and
`build_params` turns the options, whichever way they came (a Discord slash command hands them over
as a dict with the same names), into the API's params with the bot's defaults underneath:

    prompt, options = parse_text(message_text)
    params = build_params("image", prompt, options, bot.defaults)

Options: `ar` (aspect ratio `W:H`, at the area of the default size, sides in multiples of 64),
`size` (`WxH`), `steps`, `seed`, `model`, `neg` (negative prompt), `seconds` (video length),
`cfg`. A mistake raises `OptionError`, whose message is a sentence to show the user as it is.
The API still checks every value (ranges, models, the plan's largest image); these checks only
make the common mistakes friendlier.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from base.errors import TesseraError

OPTION_NAMES = ("ar", "size", "steps", "seed", "model", "neg", "seconds", "cfg")
ALIASES = {"aspect": "ar", "negative": "neg", "no": "neg", "duration": "seconds", "s": "seconds"}
DEFAULT_SIZE = {"image": (1024, 1024), "video": (768, 512)}
PICTURE = ("image", "video")
MAX_SIDE = 4096

_OPTION = re.compile(r"(?:^|\s)(?:--|\u2014|\u2013)([A-Za-z]+)(?=\s|$)")
_SIZE = re.compile(r"^\s*(\d{2,5})\s*[xX\u00d7*]\s*(\d{2,5})\s*$")
_RATIO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[:/xX]\s*(\d+(?:\.\d+)?)\s*$")


class OptionError(TesseraError, ValueError):
    """An option the user wrote cannot be used; the message says why, for the user to read."""


def parse_text(text: str) -> tuple[str, dict[str, str]]:
    """The prompt and the `--name value` options written in `text`.

    A value runs to the next option, so `--neg blurry, text` is "blurry, text". An option given
    twice keeps its last value. An unknown option or one without a value is an OptionError.
    """
    matches = list(_OPTION.finditer(text))
    if not matches:
        return text.strip(), {}
    prompt = text[: matches[0].start()].strip()
    options: dict[str, str] = {}
    for i, match in enumerate(matches):
        name = _canonical(match.group(1))
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        value = text[match.end() : end].strip()
        if not value:
            raise OptionError(f"--{match.group(1)} needs a value, like {_EXAMPLES[name]}.")
        options[name] = value
    return prompt, options


_EXAMPLES = {
    "ar": "--ar 16:9",
    "size": "--size 1024x768",
    "steps": "--steps 30",
    "seed": "--seed 42",
    "model": "--model sdxl",
    "neg": "--neg blurry, text",
    "seconds": "--seconds 4",
    "cfg": "--cfg 7",
}


def _canonical(name: str) -> str:
    lowered = name.lower()
    lowered = ALIASES.get(lowered, lowered)
    if lowered not in OPTION_NAMES:
        known = ", ".join(f"--{n}" for n in OPTION_NAMES)
        raise OptionError(f"I don't know the option --{name}. I know {known}.")
    return lowered


def build_params(
    capability: str, prompt: str, options: Mapping[str, object] | None, defaults: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The API params for a request: the user's options over the bot's defaults (`[bots.defaults]`).

    `options` maps option names (`OPTION_NAMES` or `ALIASES`) to values, strings from a chat or typed
    values from a slash command; None values are ignored (a slash option left out). Raises
    OptionError for an empty prompt or an option that makes no sense here.
    """
    prompt = prompt.strip()
    if not prompt:
        raise OptionError("Please write what you want after the command, for example: /image a red fox in snow")
    given = {_canonical(k): v for k, v in (options or {}).items() if v is not None and v != ""}
    merged = {**{_canonical(k): v for k, v in (defaults or {}).items()}, **given}
    if "size" in given and "ar" in given:
        raise OptionError("Give either --size or --ar, not both.")
    if "size" in given or "ar" in given:  # the user's choice replaces the default's, whichever it was
        merged = {k: v for k, v in merged.items() if k not in ("size", "ar") or k in given}
    params: dict[str, Any] = {"prompt": prompt}
    if "model" in merged:
        params["model"] = str(merged["model"]).strip()
    if capability in PICTURE:
        default_size = (defaults or {}).get("size")
        base = _size(default_size) if default_size is not None else DEFAULT_SIZE[capability]
        params.update(_picture(capability, merged, base))
    elif set(given) - {"model"}:
        used = ", ".join(f"--{n}" for n in sorted(set(given) - {"model"}))
        raise OptionError(f"{used} only apply to images and videos.")
    return params


def _picture(capability: str, options: Mapping[str, object], base: tuple[int, int]) -> dict[str, Any]:
    """Picture params; `base` is the bot's default size, whose area an aspect ratio keeps."""
    params: dict[str, Any] = {}
    width, height = base
    if "size" in options:
        width, height = _size(options["size"])
    elif "ar" in options:
        width, height = aspect_size(options["ar"], base[0] * base[1])
    params["width"], params["height"] = width, height
    if "steps" in options:
        params["steps"] = _whole(options["steps"], "steps", 1, 150)
    if "seed" in options:
        params["seed"] = _whole(options["seed"], "seed", 0, 2**63 - 1)
    if "cfg" in options:
        params["cfg"] = _number(options["cfg"], "cfg", 0, 30)
    if "neg" in options:
        params["negative_prompt"] = str(options["neg"]).strip()
    if "seconds" in options:
        if capability != "video":
            raise OptionError("--seconds is for videos; this bot makes images.")
        params["duration_seconds"] = _number(options["seconds"], "seconds", 0.5, 60)
    return params


def aspect_size(ratio: object, area: int) -> tuple[int, int]:
    """(width, height) of the aspect ratio `W:H` with about `area` pixels, each side a multiple of 64."""
    match = _RATIO.match(str(ratio))
    if not match:
        raise OptionError(f"{ratio} is not an aspect ratio; write it like 16:9 or 3:4.")
    w, h = float(match.group(1)), float(match.group(2))
    if w <= 0 or h <= 0 or max(w / h, h / w) > 4:
        raise OptionError(f"{ratio} is too narrow; use a ratio between 1:4 and 4:1.")
    height = math.sqrt(area * h / w)
    width = height * w / h
    return _multiple_of_64(width), _multiple_of_64(height)


def _multiple_of_64(side: float) -> int:
    return max(64, math.floor(side / 64 + 0.5) * 64)  # halves round up, not to even


def _size(value: object) -> tuple[int, int]:
    match = _SIZE.match(str(value))
    if not match:
        raise OptionError(f"{value} is not a size; write it like 1024x768.")
    width, height = int(match.group(1)), int(match.group(2))
    if not (64 <= width <= MAX_SIDE and 64 <= height <= MAX_SIDE):
        raise OptionError(f"{width}x{height} is out of range; each side must be between 64 and {MAX_SIDE}.")
    if width % 64 or height % 64:
        width, height = _multiple_of_64(width), _multiple_of_64(height)
    return width, height


def _whole(value: object, name: str, low: int, high: int) -> int:
    try:
        number = int(str(value).strip()) if not isinstance(value, int) or isinstance(value, bool) else value
    except ValueError:
        raise OptionError(f"--{name} takes a whole number, like {_EXAMPLES[name]}.") from None
    if not low <= number <= high:
        raise OptionError(f"--{name} must be between {low} and {high}.")
    return number


def _number(value: object, name: str, low: float, high: float) -> float | int:
    try:
        number = float(str(value).strip())
    except ValueError:
        raise OptionError(f"--{name} takes a number, like {_EXAMPLES[name]}.") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise OptionError(f"--{name} must be between {low:g} and {high:g}.")
    return int(number) if number.is_integer() else number
