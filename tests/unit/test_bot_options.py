"""A request's options, written in a chat or given by a slash command, as the API's params."""

from __future__ import annotations

import pytest

from bots.options import OptionError, aspect_size, build_params, parse_text


def test_options_are_taken_out_of_the_prompt_and_a_value_runs_to_the_next_option() -> None:
    prompt, options = parse_text("a lighthouse at dusk --ar 16:9 --neg blurry, text \u2014seed 7 --STEPS 30")
    assert prompt == "a lighthouse at dusk"
    assert options == {"ar": "16:9", "neg": "blurry, text", "seed": "7", "steps": "30"}
    assert parse_text("  just words  ") == ("just words", {})
    assert parse_text("a clip --duration 3 --aspect 1:1") == ("a clip", {"seconds": "3", "ar": "1:1"})


@pytest.mark.parametrize(
    ("text", "says"),
    [("a fox --colour red", "--colour"), ("a fox --steps", "--steps 30"), ("a fox --ar", "16:9")],
)
def test_an_unknown_or_empty_option_is_a_friendly_error(text: str, says: str) -> None:
    with pytest.raises(OptionError, match=says):
        parse_text(text)


def test_an_aspect_ratio_keeps_the_default_area_in_multiples_of_64() -> None:
    assert aspect_size("16:9", 1024 * 1024) == (1344, 768)
    assert aspect_size("1:1", 1024 * 1024) == (1024, 1024)
    assert aspect_size("9/16", 768 * 512) == (448, 832)
    params = build_params("image", "a fox", {"ar": "3:4"}, {"size": "512x512", "steps": 20})
    assert params == {"prompt": "a fox", "width": 448, "height": 576, "steps": 20}
    for bad in ("banana", "0:1", "10:1"):
        with pytest.raises(OptionError):
            aspect_size(bad, 1024 * 1024)


def test_the_users_options_override_the_bots_defaults() -> None:
    defaults = {"model": "sdxl", "size": "1024x1024", "steps": 30}
    assert build_params("image", "a fox", {}, defaults) == {
        "prompt": "a fox",
        "model": "sdxl",
        "width": 1024,
        "height": 1024,
        "steps": 30,
    }
    params = build_params(
        "image",
        "a fox",
        {"size": "800x600", "steps": "12", "seed": 5, "model": "flux-schnell", "neg": "text", "cfg": "6.5"},
        defaults,
    )
    assert params == {
        "prompt": "a fox",
        "model": "flux-schnell",
        "width": 832,  # rounded to a multiple of 64
        "height": 576,
        "steps": 12,
        "seed": 5,
        "negative_prompt": "text",
        "cfg": 6.5,
    }
    assert build_params("image", "a fox", {"ar": "16:9", "steps": None}, defaults)["width"] == 1344  # default size gone


def test_a_video_takes_seconds_and_other_capabilities_take_only_a_model() -> None:
    assert build_params("video", "waves", {"seconds": "4"}, {}) == {
        "prompt": "waves",
        "width": 768,
        "height": 512,
        "duration_seconds": 4,
    }
    assert build_params("text", "why is the sky blue", {"model": "gemma3-270m"}, {"size": "512x512"}) == {
        "prompt": "why is the sky blue",
        "model": "gemma3-270m",
    }
    with pytest.raises(OptionError, match="only apply to images and videos"):
        build_params("tts", "hello", {"steps": "3"}, {})
    with pytest.raises(OptionError, match="for videos"):
        build_params("image", "a fox", {"seconds": "3"}, {})


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"size": "1024"}, "not a size"),
        ({"size": "10x10000"}, "out of range"),
        ({"steps": "many"}, "whole number"),
        ({"steps": "500"}, "between 1 and 150"),
        ({"seed": "-1"}, "between 0"),
        ({"cfg": "hot"}, "takes a number"),
        ({"size": "512x512", "ar": "1:1"}, "either --size or --ar"),
    ],
)
def test_a_bad_value_says_what_is_wrong(options: dict[str, str], says: str) -> None:
    with pytest.raises(OptionError, match=says):
        build_params("image", "a fox", options, {})


def test_an_empty_prompt_asks_for_one() -> None:
    with pytest.raises(OptionError, match="write what you want"):
        build_params("image", "   ", {}, {})
