from __future__ import annotations

import pytest

from base import catalog
from streams import subjects as s


def test_user_supplied_tokens_cannot_widen_a_subject() -> None:
    for bad in ("a.b", "*", ">", "a b", ""):
        assert not s.is_token(bad)
    with pytest.raises(ValueError):
        s.dispatch("gpu.>")


def test_subjects_read_well() -> None:
    assert s.dispatch("gpu-0") == "tessera.dispatch.gpu-0"
    assert s.done("telegram", None, "j1") == "tessera.done.telegram._.j1"
    assert s.event("job", "j1", "JobQueued.v1") == "tessera.events.job.j1.JobQueued_v1"


def test_tts_costs_by_characters_and_echo_is_free() -> None:
    models = catalog.Catalog.load()
    assert models.model_for("echo", None).cost({"prompt": "x" * 5000}) == 0
    assert models.quote("tts", "espeak-ng", {"prompt": "x" * 1000}).cost == 1.0
    with pytest.raises(catalog.QuoteRefused, match="does not serve"):
        models.model_for("tts", "echo")
