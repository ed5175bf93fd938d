"""Token prices: 1 token is one 1024x1024 image; every capability's unit; the charge cap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from base import catalog

CATALOG = catalog.Catalog.load()


def model(name: str) -> catalog.Model:
    return CATALOG[name]


def test_one_token_is_one_1024_square_image() -> None:
    assert model("sdxl").cost({"prompt": "x"}) == 1.0
    assert model("sdxl").cost({"prompt": "x", "width": 512, "height": 512}) == 0.25
    assert model("sdxl").cost({"prompt": "x", "batch_size": 4}) == 4.0
    assert model("flux-dev").cost({"prompt": "x"}) == 2.0  # priced per model


def test_each_capability_has_its_unit() -> None:
    assert model("ltx-video").cost({"prompt": "x", "width": 1024, "height": 576, "duration_seconds": 5}) == 10.0
    assert model("gemma3-270m").cost({"prompt": "x", "max_tokens": 1000}) == 0.11
    assert model("espeak-ng").cost({"prompt": "x" * 2500}) == 2.5
    wav = {"object": "uploads/u/1", "content_type": "audio/wav", "size_bytes": 19_200_044, "duration_seconds": 600.0}
    assert model("pocketsphinx-en").cost({"prompt": "", "input": wav}) == 1.0
    # What the client declares is not a price: only the measured length counts.
    assert model("pocketsphinx-en").cost({"prompt": "", "input": wav, "duration_seconds": 0.1}) == 1.0
    mp3 = {"object": "uploads/u/2", "content_type": "audio/mpeg", "size_bytes": 120_000}
    assert model("pocketsphinx-en").cost({"prompt": "", "input": mp3}) == 0.2  # <= 120 s at 8 kbit/s
    assert model("echo").cost({"prompt": "x" * 5000}) == 0.0


@given(max_tokens=st.integers(1, 32768), generated=st.floats(0, 100_000))
def test_text_is_charged_by_generated_tokens_and_never_above_the_reservation(max_tokens: int, generated: float) -> None:
    m = model("gemma3-270m")
    params = {"prompt": "x", "max_tokens": max_tokens}
    charged = m.actual_cost(params, {"output_tokens": generated})
    assert 0 < charged <= m.cost(params)
    if generated < max_tokens:
        assert charged == m._tokens(generated / 1000)


@pytest.mark.parametrize(
    "params", [{"width": "big"}, {"width": 10}, {"batch_size": 9}, {"batch_size": 1.5}, {"height": True}]
)
def test_bad_size_parameters_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(catalog.ParamError):
        model("sdxl").check({"prompt": "x", **params})


def test_operators_reprice_and_add_models_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(
        json.dumps(
            {
                "sdxl": {"pricing": {"base": 0.5, "rate": 1.5}},
                "sd15": {
                    "capability": "image",
                    "engine": "comfyui",
                    "description": "SD 1.5",
                    "gated": True,
                    "pricing": {"rate": 0.5},
                    "default": True,
                },
            }
        )
    )
    loaded = catalog.Catalog.load(path)
    assert loaded["sdxl"].cost({"prompt": "x"}) == 2.0
    assert loaded["sd15"].cost({"prompt": "x"}) == 0.5 and loaded.defaults["image"] == "sd15"
    assert loaded.quote("image", None, {"prompt": "x"}).model.name == "sd15"
    assert CATALOG["sdxl"].cost({"prompt": "x"}) == 1.0  # loading a file changes no other catalog
    path.write_text(json.dumps({"new": {"capability": "image"}}))
    with pytest.raises(ValueError, match="needs"):
        catalog.Catalog.load(path)


def test_a_quote_has_the_model_the_size_and_the_price() -> None:
    quote = CATALOG.quote("image", "flux-dev", {"prompt": "x", "width": 512, "height": 768, "batch_size": 2})
    assert (quote.model.name, quote.width, quote.height, quote.side) == ("flux-dev", 512, 768, 768)
    assert quote.cost == model("flux-dev").cost({"prompt": "x", "width": 512, "height": 768, "batch_size": 2})
    assert CATALOG.quote("tts", None, {"prompt": "hi"}).model.name == "piper-joe"  # the default
    assert CATALOG.quote("tts", "espeak-ng", {"prompt": "hi"}).model.name == "espeak-ng"
    assert (CATALOG.quote("text", None, {"prompt": "x"}).width, CATALOG.quote("text", None, {}).height) == (0, 0)


@pytest.mark.parametrize(
    ("capability", "model_name", "params", "code"),
    [
        ("hologram", None, {}, "UNKNOWN_CAPABILITY"),
        ("image", "espeak-ng", {}, "UNKNOWN_MODEL"),
        ("image", "no-such-model", {}, "UNKNOWN_MODEL"),
        ("image", None, {"width": 10}, "VALIDATION_ERROR"),
    ],
)
def test_a_request_the_catalog_cannot_serve_gets_no_quote(
    capability: str, model_name: str | None, params: dict[str, object], code: str
) -> None:
    with pytest.raises(catalog.QuoteRefused) as refused:
        CATALOG.quote(capability, model_name, params)
    assert refused.value.code == code
