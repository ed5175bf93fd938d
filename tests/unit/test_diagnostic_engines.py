"""The diagnostic image and video engines: the asked size, the same bytes for the same seed, a video
as long as asked with a bounded number of frames, and their place in the catalog."""

from __future__ import annotations

import io
import uuid

import pytest
from PIL import Image

from base.catalog import Catalog
from base.config import default_engines
from worker_node.engines import EngineError, JobContext, JobInput, build
from worker_node.engines.diagnostic import FRAME_PIXELS, frame_durations


async def _no_progress(fraction: float | None, message: str | None, text: str | None) -> None:
    return None


async def run(engine: str, **params: object) -> list:
    capability = engine.removeprefix("diagnostic-")
    job = JobInput(uuid.uuid4(), 1, capability, engine, {"prompt": "a lighthouse at dusk", **params})
    return await build(engine).run(job, JobContext(progress=_no_progress))


def frames_of(data: bytes) -> list[int]:
    """The display time of each frame of an animated WebP, in milliseconds."""
    video = Image.open(io.BytesIO(data))
    shown = []
    for index in range(video.n_frames):
        video.seek(index)
        video.load()
        shown.append(video.info["duration"])
    return shown


async def test_images_have_the_asked_size_and_batch() -> None:
    outputs = await run("diagnostic-image", width=640, height=384, batch_size=3, seed=5)
    assert len(outputs) == 3
    for output in outputs:
        assert (output.kind, output.format, output.content_type) == ("image", "png", "image/png")
        assert (output.width, output.height) == (640, 384)
        assert Image.open(io.BytesIO(output.data)).size == (640, 384)
    assert len({o.data for o in outputs}) == 3, "each image of a batch is its own"


async def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_bytes() -> None:
    first, again, other = [await run("diagnostic-image", seed=s, width=256, height=256) for s in (7, 7, 8)]
    assert first[0].data == again[0].data
    assert first[0].data != other[0].data
    video, video_again = [await run("diagnostic-video", seed=7, width=160, height=96) for _ in range(2)]
    assert video[0].data == video_again[0].data


async def test_without_a_size_an_image_is_the_catalogs_default() -> None:
    (output,) = await run("diagnostic-image")
    model = Catalog.load()["diagnostic-image"]
    assert (output.width, output.height) == (model.default_width, model.default_height) == (1024, 1024)


async def test_a_video_lasts_the_asked_seconds_and_reports_them_as_usage() -> None:
    (output,) = await run("diagnostic-video", width=320, height=240, duration_seconds=2.5, seed=1)
    assert (output.kind, output.format, output.content_type) == ("video", "webp", "image/webp")
    assert Image.open(io.BytesIO(output.data)).size == (320, 240)
    shown = frames_of(output.data)
    assert len(shown) == 20 and sum(shown) == 2500  # 8 frames a second
    assert output.duration_seconds == 2.5 and output.usage == {"duration_seconds": 2.5}


async def test_a_long_large_video_holds_few_frames_that_last_longer() -> None:
    (output,) = await run("diagnostic-video", width=1024, height=576, duration_seconds=60, seed=1)
    shown = frames_of(output.data)
    assert len(shown) == 24 and sum(shown) == 60_000
    assert output.usage == {"duration_seconds": 60.0}


def test_frames_are_bounded_by_pixels_and_never_fewer_than_two() -> None:
    for seconds, width, height in [(0.5, 64, 64), (4, 768, 512), (60, 4096, 4096), (13.37, 1000, 700)]:
        shown = frame_durations(seconds, width, height)
        assert sum(shown) == round(seconds * 1000)
        assert 2 <= len(shown) and (len(shown) == 2 or len(shown) * width * height <= FRAME_PIXELS)
        assert max(shown) - min(shown) <= 1


@pytest.mark.parametrize(
    ("engine", "params"),
    [
        ("diagnostic-image", {"width": "wide"}),
        ("diagnostic-image", {"height": 10}),
        ("diagnostic-image", {"batch_size": 9}),
        ("diagnostic-image", {"seed": -1}),
        ("diagnostic-video", {"duration_seconds": 0}),
        ("diagnostic-video", {"duration_seconds": True}),
    ],
)
async def test_parameters_out_of_range_fail_as_invalid(engine: str, params: dict[str, object]) -> None:
    with pytest.raises(EngineError) as refused:
        await run(engine, **params)
    assert refused.value.code == "INVALID_PARAMS"


def test_the_catalog_lists_them_as_diagnostic_open_to_every_plan_and_not_the_defaults() -> None:
    catalog = Catalog.load()
    for name, capability in (("diagnostic-image", "image"), ("diagnostic-video", "video")):
        model = catalog[name]
        assert (model.capability, model.engine, model.diagnostic, model.gated) == (capability, name, True, False)
        assert not catalog.is_default(model)
        engine = build(name)
        assert engine.models == (name,) and engine.capabilities == (capability,)
    assert catalog.defaults["image"] == "sdxl" and catalog.defaults["video"] == "ltx-video"
    assert catalog.quote("image", "diagnostic-image", {"prompt": "x"}).cost == 0.01
    assert catalog.quote("video", "diagnostic-video", {"prompt": "x", "duration_seconds": 60}).cost == 0.4
    assert {"diagnostic-image", "diagnostic-video"} <= set(default_engines())
