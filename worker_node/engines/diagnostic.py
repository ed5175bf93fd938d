"""Diagnostic image and video engines: pictures drawn with Pillow, with no GPU and no model.

They stand in for ComfyUI where there is none (a laptop running `tessera up`, CI), so the image and
video paths (sizes, batches, seeds, progress, artifacts, prices, the bots' replies) run end to end.
Each picture shows the prompt, its size and its seed over shapes placed by the seed, so the same
seed gives the same bytes and a person can tell from the picture what was asked. The real path
stays ComfyUI (`worker_node/engines/comfyui.py`).

The drawing and encoding run in a thread, not in an `EngineProcess`: Pillow lets go of the GIL
while it encodes, and a job is kept short (a 1024x1024 PNG in about 30 ms; a video's frames are
capped by `FRAME_PIXELS`, about half a second of WebP encoding), so heartbeats and progress flow.
"""

from __future__ import annotations

import asyncio
import functools
import io
import math
import random
import textwrap
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from worker_node.engines.base import EngineError, JobContext, JobInput, Output

# The catalog's defaults for these models (base/catalog.py): the sizes and length priced when a
# request names none.
IMAGE_SIZE = (1024, 1024)
VIDEO_SIZE = (768, 512)
VIDEO_SECONDS = 4.0
MAX_BATCH = 4
MAX_SIDE = 4096  # the largest side any seed plan allows (admin)
MAX_SECONDS = 60.0
FPS = 8
# All frames of a video together hold at most this many pixels (24 frames at 1024x576), so a long
# or large video still encodes in about half a second: its frames are then shown for longer.
FRAME_PIXELS = 24 * 1024 * 576


@dataclass(frozen=True)
class Picture:
    """What a job asks to be drawn, its parameters checked."""

    model: str
    prompt: str
    width: int
    height: int
    seed: int


def _integer(params: dict[str, object], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
        raise EngineError("INVALID_PARAMS", f"params.{name} must be an integer")
    if not low <= value <= high:
        raise EngineError("INVALID_PARAMS", f"params.{name} must be between {low} and {high}")
    return int(value)


def picture(job: JobInput, size: tuple[int, int]) -> Picture:
    """The job's prompt, size and seed (a random seed unless `params.seed` is given, as ComfyUI does)."""
    params = job.params
    seed = params.get("seed")
    return Picture(
        model=job.model,
        prompt=str(params.get("prompt") or ""),
        width=_integer(params, "width", size[0], 64, MAX_SIDE),
        height=_integer(params, "height", size[1], 64, MAX_SIDE),
        seed=random.randrange(2**48) if seed is None else _integer(params, "seed", 0, 0, 2**63 - 1),
    )


@functools.lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's own font (Aileron, built in since Pillow 10.1), the same on every machine."""
    return ImageFont.load_default(size=size)


def _colour(rng: random.Random, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    return rng.randrange(low, high), rng.randrange(low, high), rng.randrange(low, high)


def draw(pic: Picture, caption: str, *, variant: int = 0, phase: float = 0.0) -> Image.Image:
    """One picture: a background and shapes chosen by the seed (and `variant`, the image of a batch),
    moved across by `phase` (0 to 1, a video's time), under the prompt and `caption`."""
    rng = random.Random(f"{pic.seed}/{variant}")
    width, height = pic.width, pic.height
    image = Image.new("RGB", (width, height), _colour(rng, 30, 150))
    canvas = ImageDraw.Draw(image)
    short = min(width, height)
    for _ in range(7):
        x, y, radius = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(short / 12, short / 4)
        x = (x + phase * width) % width
        canvas.ellipse((x - radius, y - radius, x + radius, y + radius), fill=_colour(rng, 60, 256))
    font_size = max(10, short // 18)
    columns = max(8, int(width / (font_size * 0.55)) - 2)
    lines = textwrap.wrap(pic.prompt, columns, max_lines=max(1, height // (font_size * 2)), placeholder=" ...")
    text = "\n".join([*lines, "", f"{pic.model}  {width}x{height}  seed {pic.seed}", caption])
    margin = max(4, short // 32)
    canvas.multiline_text(
        (margin, margin),
        text,
        font=_font(font_size),
        fill=(255, 255, 255),
        stroke_width=max(1, font_size // 12),
        stroke_fill=(0, 0, 0),
    )
    return image


def png(pic: Picture, caption: str, variant: int) -> bytes:
    """One image of a batch, drawn and encoded as PNG."""
    out = io.BytesIO()
    draw(pic, caption, variant=variant).save(out, "PNG")
    return out.getvalue()


class DiagnosticImageEngine:
    """`diagnostic-image`: `batch_size` PNGs of the asked size, each showing the prompt, size and seed."""

    name = "diagnostic-image"
    capabilities: tuple[str, ...] = ("image",)
    models: tuple[str, ...] = ("diagnostic-image",)
    slots = 4

    async def run(self, job: JobInput, ctx: JobContext) -> list[Output]:
        pic = picture(job, IMAGE_SIZE)
        count = _integer(job.params, "batch_size", 1, 1, MAX_BATCH)
        outputs = []
        for index in range(count):
            caption = f"image {index + 1} of {count}"
            data = await asyncio.to_thread(png, pic, caption, index)
            outputs.append(
                Output(
                    kind="image",
                    format="png",
                    content_type="image/png",
                    data=data,
                    width=pic.width,
                    height=pic.height,
                )
            )
            await ctx.progress((index + 1) / count, caption, None)
        return outputs

    async def close(self) -> None:
        return None


def frame_durations(seconds: float, width: int, height: int) -> list[int]:
    """How long each frame of a video is shown, in milliseconds, adding up to `seconds`: FPS frames a
    second, fewer when they would hold more than FRAME_PIXELS in all (two at the least)."""
    total_ms = max(1, round(seconds * 1000))
    frames = max(2, min(math.ceil(seconds * FPS), FRAME_PIXELS // (width * height)))
    share, extra = divmod(total_ms, frames)
    return [share + (1 if index < extra else 0) for index in range(frames)]


def webp(frames: list[Image.Image], durations: list[int]) -> bytes:
    out = io.BytesIO()
    frames[0].save(
        out, "WEBP", save_all=True, append_images=frames[1:], duration=durations, loop=0, quality=60, method=0
    )
    return out.getvalue()


class DiagnosticVideoEngine:
    """`diagnostic-video`: an animated WebP of `duration_seconds`, its shapes moving across the
    frames and each frame showing the prompt, size, seed and time."""

    name = "diagnostic-video"
    capabilities: tuple[str, ...] = ("video",)
    models: tuple[str, ...] = ("diagnostic-video",)
    slots = 2

    async def run(self, job: JobInput, ctx: JobContext) -> list[Output]:
        pic = picture(job, VIDEO_SIZE)
        seconds = job.params.get("duration_seconds", VIDEO_SECONDS)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0.5 <= seconds <= MAX_SECONDS:
            raise EngineError("INVALID_PARAMS", f"params.duration_seconds must be a number from 0.5 to {MAX_SECONDS:g}")
        durations = frame_durations(float(seconds), pic.width, pic.height)
        total = sum(durations) / 1000
        frames: list[Image.Image] = []
        elapsed = 0
        for index, shown in enumerate(durations):
            caption = f"t = {elapsed / 1000:.2f} s of {total:.2f} s"
            frames.append(await asyncio.to_thread(draw, pic, caption, phase=index / len(durations)))
            elapsed += shown
            await ctx.progress(0.9 * (index + 1) / len(durations), f"frame {index + 1} of {len(durations)}", None)
        data = await asyncio.to_thread(webp, frames, durations)
        return [
            Output(
                kind="video",
                format="webp",
                content_type="image/webp",
                data=data,
                width=pic.width,
                height=pic.height,
                duration_seconds=total,
                usage={"duration_seconds": total},
            )
        ]

    async def close(self) -> None:
        return None
