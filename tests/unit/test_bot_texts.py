"""What a bot says: every refusal a bot can meet as a plain sentence, the quota with its reset time,
and the progress message at each step."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import pytest

from bots import texts
from bots.progress import JobUpdate
from gateway.client import ApiError
from gateway.schemas import Me, PlanList, PlanTerms, PlanView, QuotaDay, UserLimits
from scheduler.admission import RefusalCode

# Codes of commands a bot never sends: operators' account commands and uploads.
NOT_MET_BY_BOTS = {
    RefusalCode.UNKNOWN_PLAN,
    RefusalCode.INVALID_PLAN,
    RefusalCode.USER_NOT_FOUND,
    RefusalCode.KEY_NOT_FOUND,
    RefusalCode.TOO_MANY_KEYS,
    RefusalCode.UPLOAD_TOO_LARGE,
    RefusalCode.UPLOAD_QUOTA_EXCEEDED,
    RefusalCode.UPLOAD_NOT_FOUND,
}
NOW = datetime(2025, 3, 1, 20, 40, tzinfo=UTC)


def plan(tier: str, name: str, daily: int | None, price: int, models: list[str]) -> PlanView:
    return PlanView(
        tier=tier,
        name=name,
        daily_token_limit=daily,
        requests_per_minute=10,
        max_concurrent_jobs=1,
        max_queued_jobs=3,
        priority=0,
        max_resolution=1024,
        allowed_models=models,
        price_cents=price,
        uploads_per_day=None,
        upload_bytes_per_day=None,
        max_upload_bytes=None,
        billing_period="month",
        description=None,
    )


def me(remaining: float | None = 1.5) -> Me:
    terms = PlanTerms(**plan("free", "Free", 10, 0, []).model_dump(exclude={"billing_period", "description"}))
    return Me(
        user_id=uuid.uuid4(),
        platform="telegram",
        platform_user_id="42",
        display_name=None,
        registered=True,
        plan=terms,
        limits=UserLimits(
            daily_tokens=10,
            requests_per_minute=10,
            max_concurrent_jobs=1,
            max_queued_jobs=3,
            max_resolution=1024,
            allowed_models=[],
            uploads_per_day=None,
            upload_bytes_per_day=None,
            max_upload_bytes=None,
        ),
        today=QuotaDay(
            date=date(2025, 3, 1),
            resets_at=datetime(2025, 3, 2, tzinfo=UTC),
            tokens_used=8,
            tokens_reserved=0.5,
            tokens_remaining=remaining,
            tokens_by_capability={},
            jobs_completed=8,
            jobs_failed=0,
        ),
        jobs_running=1,
        jobs_queued=0,
    )


@pytest.mark.parametrize("code", sorted(set(RefusalCode) - NOT_MET_BY_BOTS))
def test_every_refusal_a_bot_can_meet_has_its_own_sentence(code: RefusalCode) -> None:
    generic = texts.refusal(ApiError(418, "SOMETHING_NEW", "a detail"))
    sentence = texts.refusal(ApiError(429, code.value, "tessera's detail", retry_after=30))
    assert sentence != generic and sentence.endswith(".") and code.value not in sentence


def test_a_quota_refusal_says_what_is_left_when_it_renews_and_how_to_upgrade() -> None:
    error = ApiError(429, "QUOTA_EXCEEDED", "this job costs 2 tokens ...", retry_after=11_960)
    with_me = texts.refusal(error, me=me(1.5), now=NOW)
    assert "1.5 tokens left" in with_me and "at 00:00 UTC (in 3 h 20 min)" in with_me and "/plans" in with_me
    without = texts.refusal(error, now=NOW)
    assert "renew in 3 h 20 min" in without and "/plans" in without


def test_rate_model_and_worker_refusals_say_what_to_do() -> None:
    assert "in 40 s" in texts.refusal(ApiError(429, "RATE_LIMITED", "", retry_after=40))
    model = ApiError(403, "MODEL_NOT_ALLOWED", "", extra={"model": "flux-dev"})
    assert "flux-dev" in texts.refusal(model, model_plans=["pro", "admin"])
    assert "with the pro or admin plan" in texts.refusal(model, model_plans=["pro", "admin"])
    busy = ApiError(503, "NO_CAPABLE_WORKER", "no worker online can run sdxl", extra={"model": "sdxl"})
    assert "No machine can run the model sdxl right now" in texts.refusal(busy)
    invalid = ApiError(422, "VALIDATION_ERROR", "x", extra={"errors": [{"field": "p", "message": "steps too high"}]})
    assert "steps too high" in texts.refusal(invalid)


def test_an_unknown_refusal_gets_a_generic_sentence() -> None:
    assert texts.refusal(ApiError(400, "NEW_CODE", "the reason.")) == "Sorry, I could not do that: the reason."
    assert "try again in a minute" in texts.refusal(ApiError(502, "HTTP_ERROR", "bad gateway"))


def test_the_progress_message_at_each_step() -> None:
    job = uuid.uuid4()
    assert texts.status(JobUpdate(job_id=job, status="QUEUED", queue_position=3, estimated_seconds=95)) == (
        "Queued. 3 ahead of you. Ready in about 2 min."
    )
    assert texts.status(JobUpdate(job_id=job, status="QUEUED")) == "Queued."
    running = JobUpdate(job_id=job, status="RUNNING", fraction=0.4, step="step 12 of 30")
    assert texts.status(running) == "Working on it 40% (step 12 of 30)"
    assert texts.status(JobUpdate(job_id=job, status="RUNNING")) == "Working on it..."
    assert texts.status(JobUpdate(job_id=job, status="COMPLETED")) == "Done."
    assert "given back" in texts.status(JobUpdate(job_id=job, status="CANCELLED"))
    assert "took too long" in texts.failed({"code": "ENGINE_TIMEOUT", "message": "x"})
    assert "(out of memory)" in texts.failed({"code": "ENGINE_ERROR", "message": "out of memory"})
    assert texts.done(1) == "Done. It cost 1 token." and texts.done(2.5) == "Done. It cost 2.5 tokens."


def test_me_plans_welcome_and_help() -> None:
    text = texts.me_text(me(1.5), now=NOW)
    assert "Plan: Free" in text and "8 tokens of 10 tokens" in text and "Left today: 1.5 tokens" in text
    assert "renew at 00:00 UTC" in text and "1 running" in text
    plans = PlanList(plans=[plan("pro", "Pro", 500, 2900, ["*"]), plan("free", "Free", 10, 0, [])])
    listed = texts.plans_text(plans, current="free").splitlines()
    assert listed[1].startswith("- Free (yours): 10 tokens a day") and "29.00 a month" in listed[2]
    assert "/imagine" in texts.help_text("discord", "image") and "/image " in texts.help_text("telegram", "image")
    assert "1.5 tokens left today" in texts.welcome("telegram", "image", me(1.5))
    assert texts.flooded(8) == "Easy there! Please wait 8 s before the next request."
