"""The other spellings a submit may use, turned into the one the platform speaks.

The product documents (the seeds) write a request as `{"capability": "audio", "model": "sdxl",
"params": {"resolution": "1024x1024"}}`. The gateway accepts that shape and hands the scheduler the
canonical one: capability `tts`, `params.model`, `params.width` and `params.height`. A spelling it
cannot read, or two spellings that disagree, is refused with its own code: nothing a client sends
is silently dropped.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

from base.catalog import CAPABILITIES, CAPABILITY_ALIASES
from gateway.errors import Problem
from gateway.schemas import JobCreate

_RESOLUTION = re.compile(r"\s*([0-9]{1,6})\s*[xX\u00d7]\s*([0-9]{1,6})\s*")
_PICTURES = ("image", "video")
_Request = TypeVar("_Request", bound=JobCreate)


def _resolution(capability: str, params: dict[str, Any]) -> None:
    """`params.resolution` ("1024x1024", width by height) into `params.width` and `params.height`."""
    value = params.pop("resolution")
    if capability not in _PICTURES:
        raise Problem(422, "INVALID_RESOLUTION", f"params.resolution is for images and video, not {capability}")
    match = _RESOLUTION.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise Problem(
            422, "INVALID_RESOLUTION", "params.resolution must be width x height in pixels, such as '1024x1024'"
        )
    size = {"width": int(match[1]), "height": int(match[2])}
    for name, pixels in size.items():
        given = params.get(name)
        if given is not None and given != pixels:
            raise Problem(
                422,
                "RESOLUTION_CONFLICT",
                f"params.resolution {value!r} says {name} {pixels}, and params.{name} says {given!r}; send one of them",
            )
        params[name] = pixels


def canonical(body: _Request) -> _Request:
    """The request in the platform's own terms: the capability's name for an alias (`audio` is `tts`),
    a top-level `model` as `params.model`, and `params.resolution` as width and height. Raises a
    Problem (422) for a resolution it cannot read or for values that contradict each other."""
    capability = CAPABILITY_ALIASES.get(body.capability, body.capability)
    if body.model is None and "resolution" not in body.params and capability == body.capability:
        return body  # the canonical shape already: the common case costs no copy
    params = dict(body.params)
    if body.model is not None:
        given = params.get("model")
        if given is not None and given != body.model:
            raise Problem(
                422,
                "MODEL_CONFLICT",
                f"the request names model {body.model!r} and params.model {given!r}; send one of them",
            )
        params["model"] = body.model
    if "resolution" in params and capability in CAPABILITIES:  # an unknown one is refused as such
        _resolution(capability, params)
    return body.model_copy(update={"capability": capability, "params": params, "model": None})
