"""Whatever JSON a client sends, the gateway answers with a problem code or accepts the job, and
the scheduler never stops leading (issue 11). Hypothesis writes the requests.

The generated requests run in a thread with a blocking client, while the gateway, scheduler and
worker run on the test's event loop.
"""

from __future__ import annotations

import asyncio
import json

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from base import catalog
from scheduler.service import Scheduler
from tests.conftest import Platform

TEXT = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(["a\x00b", "", " ", "x" * 300])
NUMBERS = (
    st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([-1, 0, 1e9, 10**20])
)
SCALARS = st.none() | st.booleans() | NUMBERS | TEXT
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12
)
PARAM_NAMES = (
    st.sampled_from(
        [
            "prompt",
            "model",
            "width",
            "height",
            "steps",
            "cfg",
            "seed",
            "batch_size",
            "delay_seconds",
            "duration_seconds",
            "max_tokens",
            "speed",
            "input_upload",
            "input",
            "voice",
            "resolution",
        ]
    )
    | TEXT
)
PARAMS = st.dictionaries(PARAM_NAMES, JSON, max_size=6)
# Near-valid jobs, so that acceptance is exercised too: an echo or TTS prompt with odd extra params.
NEAR_VALID = st.fixed_dictionaries(
    {
        "capability": st.sampled_from(["echo", "tts"]),
        "params": st.fixed_dictionaries(
            {"prompt": TEXT},
            optional={"delay_seconds": st.floats(-1, 0.2) | JSON, "speed": st.integers(80, 400) | JSON, "note": JSON},
        ),
    }
)
BODIES = st.fixed_dictionaries(
    {"capability": st.sampled_from([*catalog.CAPABILITIES, *catalog.CAPABILITY_ALIASES, "hologram"]) | TEXT},
    optional={
        "params": PARAMS | JSON,
        "frontend": JSON,
        "bot_id": JSON,
        "user_ref": JSON,
        "reply_context": JSON,
        "model": JSON,
        "extra": JSON,
    },
)


def check(response: httpx.Response) -> None:
    assert response.status_code < 500 or response.status_code == 503, (response.status_code, response.text)
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/problem+json", response.text
        problem = response.json()
        assert isinstance(problem.get("code"), str) and problem["code"].isupper(), problem


async def test_no_request_body_makes_a_500_or_stops_the_scheduler(platform_parts: Platform) -> None:
    scheduler = Scheduler(
        platform_parts.settings, nats_url=platform_parts.nats_url, database_url=platform_parts.database_url
    )
    await platform_parts.start("scheduler", scheduler)
    await asyncio.wait_for(scheduler.is_leader.wait(), 10)
    await platform_parts.start_worker(engines=("echo", "piper", "espeak"))
    keys = [await platform_parts.user_key(plan="admin"), await platform_parts.frontend_key("telegram", "tg-1")]
    seen: dict[int, int] = {}

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=NEAR_VALID | BODIES | JSON, as_bot=st.booleans(), raw=st.booleans())
    def requests(body: object, as_bot: bool, raw: bool) -> None:
        headers = {
            "Authorization": f"Bearer {keys[as_bot]}",
            "Tessera-User-Ref": "telegram:5",
            "Content-Type": "application/json",
        }
        # json.dumps writes NaN and Infinity as such, which strict parsers refuse: both are tried.
        content = json.dumps(body, allow_nan=True) if raw else json.dumps(body, allow_nan=True).replace("NaN", "null")
        with httpx.Client(base_url=platform_parts.api_url, timeout=30) as client:
            response = client.post("/api/v1/jobs", content=content.encode("utf-8", "surrogatepass"), headers=headers)
        check(response)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1

    await asyncio.to_thread(requests)
    assert scheduler.is_leader.is_set() and scheduler.terms == 1, "the scheduler stopped leading"
    assert seen.get(202, 0) > 0 and sum(n for code, n in seen.items() if 400 <= code < 500) > 0, seen
