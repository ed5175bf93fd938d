"""The product documents' request shape in the platform's terms, and signed artifact links: what
each accepts and what each refuses, without a platform (tests/e2e covers them over HTTP)."""

from __future__ import annotations

import stat
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from base.config import Settings
from gateway.errors import Problem
from gateway.job_request import canonical
from gateway.links import LinkSigner
from gateway.schemas import JobCreate
from tessera import signing_key


def shaped(capability: str, params: dict[str, Any], **fields: Any) -> JobCreate:
    return canonical(JobCreate(capability=capability, params=params, **fields))


def refusal(capability: str, params: dict[str, Any], **fields: Any) -> str:
    with pytest.raises(Problem) as refused:
        shaped(capability, params, **fields)
    assert refused.value.status == 422
    return refused.value.code


def test_audio_is_speech_synthesis() -> None:
    assert shaped("audio", {"prompt": "hi"}).capability == "tts"


def test_a_top_level_model_becomes_params_model_and_may_not_disagree_with_it() -> None:
    body = shaped("image", {"prompt": "x"}, model="diagnostic-image")
    assert body.params["model"] == "diagnostic-image" and body.model is None
    assert shaped("image", {"prompt": "x", "model": "sdxl"}, model="sdxl").params["model"] == "sdxl"
    assert refusal("image", {"prompt": "x", "model": "sdxl"}, model="flux-dev") == "MODEL_CONFLICT"


def test_a_resolution_becomes_width_and_height() -> None:
    body = shaped("image", {"prompt": "x", "resolution": "1024x768"})
    assert body.params == {"prompt": "x", "width": 1024, "height": 768}
    assert shaped("video", {"prompt": "x", "resolution": " 768 X 512 "}).params["height"] == 512
    agreeing = shaped("image", {"prompt": "x", "resolution": "512x512", "width": 512})
    assert agreeing.params == {"prompt": "x", "width": 512, "height": 512}


@pytest.mark.parametrize("resolution", ["1024", "1024x", "x768", "1024*768", "big", "", "-5x5", "1.5x2", 1024, None])
def test_a_resolution_that_is_not_width_x_height_is_refused(resolution: object) -> None:
    assert refusal("image", {"prompt": "x", "resolution": resolution}) == "INVALID_RESOLUTION"


def test_a_resolution_that_contradicts_width_or_height_is_refused() -> None:
    assert refusal("image", {"prompt": "x", "resolution": "1024x1024", "width": 512}) == "RESOLUTION_CONFLICT"
    assert refusal("image", {"prompt": "x", "resolution": "1024x1024", "height": 512}) == "RESOLUTION_CONFLICT"


def test_a_resolution_for_something_without_a_picture_is_refused() -> None:
    assert refusal("audio", {"prompt": "x", "resolution": "1024x1024"}) == "INVALID_RESOLUTION"


def test_the_canonical_shape_passes_unchanged() -> None:
    body = JobCreate(capability="image", params={"prompt": "x", "width": 512})
    assert canonical(body) is body


# --- signed links ----------------------------------------------------------------------------------

ARTIFACT = uuid.uuid4()
NOW = 1_750_000_000.0


def query_of(url: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in url.split("?", 1)[1].split("&"))


def test_a_link_is_good_until_it_expires_and_on_every_gateway_with_the_secret() -> None:
    signer = LinkSigner("s3cret", ttl_s=3600)
    url, expires_at = signer.link("http://api", ARTIFACT, None, now=NOW)
    assert url.startswith(f"http://api/api/v1/artifacts/{ARTIFACT}?")
    assert expires_at == datetime.fromtimestamp(NOW + 3600, UTC)
    query = query_of(url)
    LinkSigner("s3cret", ttl_s=60).check(ARTIFACT, query["expires"], query["signature"], now=NOW + 3600)
    with pytest.raises(Problem) as expired:
        signer.check(ARTIFACT, query["expires"], query["signature"], now=NOW + 3601)
    assert (expired.value.status, expired.value.code) == (403, "LINK_EXPIRED")


def test_a_link_never_outlives_its_artifact() -> None:
    soon = datetime.fromtimestamp(NOW + 60, UTC)
    _, expires_at = LinkSigner("s3cret", ttl_s=3600).link("http://api", ARTIFACT, soon, now=NOW)
    assert expires_at == soon


@pytest.mark.parametrize(
    "change",
    [
        "another secret",
        "another artifact",
        "a later expiry",
        "a changed signature",
        "no signature",
        "no expiry",
        "a signature that is not ascii",
        "an expiry that is not a number",
        "an expiry too long to be one",
    ],
)
def test_a_link_changed_in_any_way_is_invalid(change: str) -> None:
    signer = LinkSigner("s3cret", ttl_s=3600)
    query = query_of(signer.link("http://api", ARTIFACT, None, now=NOW)[0])
    artifact, expires, signature = ARTIFACT, query["expires"], query["signature"]
    match change:
        case "another secret":
            signer = LinkSigner("other", ttl_s=3600)
        case "another artifact":
            artifact = uuid.uuid4()
        case "a later expiry":
            expires = str(int(expires) + 86400)
        case "a changed signature":
            signature = ("A" if signature[0] != "A" else "B") + signature[1:]
        case "no signature":
            signature = None
        case "no expiry":
            expires = None
        case "a signature that is not ascii":
            signature = "é" * 43
        case "an expiry that is not a number":
            expires = "1e12"
        case "an expiry too long to be one":
            expires = "9" * 40
    with pytest.raises(Problem) as refused:
        signer.check(artifact, expires, signature, now=NOW)
    assert (refused.value.status, refused.value.code) == (403, "LINK_INVALID")


def test_tessera_up_makes_the_secret_once_for_its_owner_only_and_an_operators_own_wins(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    secret = signing_key.ensure(settings)
    assert len(secret) >= 43 and signing_key.ensure(settings) == secret
    assert stat.S_IMODE(signing_key.path(settings).stat().st_mode) == 0o600
    assert signing_key.ensure(Settings(data_dir=tmp_path, url_signing_key="operator's")) == "operator's"
