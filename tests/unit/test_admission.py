"""Admission is a pure function: one case for each code it refuses with, and the admitted case.

The codes of the other commands (cancel, accounts, keys, uploads) are decided by the scheduler's
in-memory state, which does no I/O either, so they are driven here too; every code has its HTTP
status in the gateway's one table.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import msgspec
import pytest

from base.catalog import Catalog, Quote
from events.store import PendingEvent
from events.types import PlanDefined, StreamType, UserRegistered, plan_stream_id, user_stream_id
from gateway.decisions import HTTP_STATUS, http_status
from scheduler import admission, rules
from scheduler.accounts import MAX_KEYS_PER_USER
from scheduler.admission import Admitted, RefusalCode, Refused, Standing
from scheduler.state import Handler, SchedulerState
from streams.messages import (
    CancelJob,
    ChangeUserPlan,
    CreateUser,
    Decision,
    DefinePlan,
    DeleteUpload,
    IssueApiKey,
    RateLimit,
    RevokeKey,
    StoreUpload,
    SubmitJob,
    UpdateWebhook,
)

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
UTC_ZONE = ZoneInfo("UTC")
CATALOG = Catalog.load()

PLAN = PlanDefined(
    tier="starter",
    name="Starter",
    daily_token_limit=10,
    requests_per_minute=3,
    max_concurrent_jobs=1,
    max_queued_jobs=2,
    priority=1,
    max_resolution=1024,
    allowed_models=["sdxl"],
)


class Fleet:
    """A fleet view: whether the workers are known, and the (model, longest side) they serve."""

    def __init__(self, serves: dict[str, int] | None = None, *, known: bool = True) -> None:
        self.serves = serves if serves is not None else {"sdxl": 4096, "flux-dev": 4096, "echo": 0}
        self.known = known

    def can_run(self, model: str, side: int) -> bool:
        return model in self.serves and side <= self.serves[model]


def command(
    capability: str = "image",
    model: str | None = None,
    params: dict[str, object] | None = None,
    deadline_s: float = 30.0,
) -> SubmitJob:
    return SubmitJob(
        command_id=uuid.uuid4(),
        job_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        frontend="api",
        capability=capability,
        model=model,
        params={"prompt": "a cat", **(params or {})},
        deadline=datetime.fromtimestamp(NOW + deadline_s, UTC),
    )


def quoted(capability: str = "image", model: str | None = None, **params: object) -> Quote:
    result = admission.quote(command(capability, model, params), CATALOG, NOW)
    assert isinstance(result, Quote), result
    return result


def standing(
    requests: tuple[float, ...] = (),
    queued: int = 0,
    used: float = 0.0,
    reserved: float = 0.0,
    plan: PlanDefined = PLAN,
) -> Standing:
    return Standing(plan=plan, requests=requests, queued=queued, used=used, reserved=reserved)


def admit(
    quote: Quote, user: Standing | None, fleet: Fleet | None = None, typical_seconds: float = 20.0
) -> Admitted | Refused:
    return admission.admit(quote, user, fleet or Fleet(), now=NOW, zone=UTC_ZONE, typical_seconds=typical_seconds)


def refused(result: object) -> Refused:
    assert isinstance(result, Refused), result
    return result


# --- the quote: the command and the catalog ---------------------------------------------------


def test_a_submit_that_arrives_after_its_deadline_is_refused_before_anything_else() -> None:
    result = refused(admission.quote(command("hologram", deadline_s=-1), CATALOG, NOW))
    assert result.code is RefusalCode.SUBMIT_EXPIRED and "after its deadline" in result.detail
    assert (result.rate, result.retry_after, result.counted) == (None, None, False)


@pytest.mark.parametrize(
    ("cmd", "code", "detail"),
    [
        (command("hologram"), RefusalCode.UNKNOWN_CAPABILITY, "unknown capability 'hologram'; known: image, video"),
        (
            command("image", "espeak-ng"),
            RefusalCode.UNKNOWN_MODEL,
            "model 'espeak-ng' does not serve capability 'image'",
        ),
        (command("image", "no-such"), RefusalCode.UNKNOWN_MODEL, "model 'no-such' does not serve capability 'image'"),
        (
            command("image", params={"width": 10}),
            RefusalCode.VALIDATION_ERROR,
            "params.width must be between 64 and 16384",
        ),
        (
            command("image", params={"batch_size": 1.5}),
            RefusalCode.VALIDATION_ERROR,
            "params.batch_size must be an integer",
        ),
    ],
)
def test_a_request_the_catalog_cannot_serve_is_refused_with_the_catalog_code(
    cmd: SubmitJob, code: RefusalCode, detail: str
) -> None:
    result = refused(admission.quote(cmd, CATALOG, NOW))
    assert result.code is code and result.detail.startswith(detail)
    assert (result.rate, result.retry_after, result.counted) == (None, None, False)


def test_the_quote_names_the_model_the_size_and_the_price() -> None:
    quote = quoted(width=512, height=768, batch_size=2)
    assert (quote.model.name, quote.width, quote.height, quote.side) == ("sdxl", 512, 768, 768)
    assert quote.cost == 0.75  # 2 images of 0.375 megapixel at 1 token per megapixel


# --- admission: the user's standing and the fleet --------------------------------------------


def test_an_unregistered_user_is_refused() -> None:
    result = refused(admit(quoted(), None))
    assert result.code is RefusalCode.UNKNOWN_USER and result.detail == "user is not registered"
    assert not result.counted and result.rate is None


def test_the_plans_rate_is_a_sliding_minute_and_a_refused_request_is_not_counted() -> None:
    result = refused(admit(quoted(), standing(requests=(NOW - 70, NOW - 45, NOW - 30, NOW - 1))))
    assert result.code is RefusalCode.RATE_LIMITED and not result.counted
    assert result.rate == RateLimit(limit=3, remaining=0, reset_seconds=15.0)  # the oldest of 3 leaves in 15 s
    assert result.retry_after == 15
    assert result.detail == "more than 3 requests in a minute on the Starter plan; retry in 15s"


def test_a_gated_model_outside_the_plan_is_refused_and_the_request_counted() -> None:
    result = refused(admit(quoted(model="flux-dev"), standing(requests=(NOW - 10,))))
    assert result.code is RefusalCode.MODEL_NOT_ALLOWED and result.counted
    assert result.rate == RateLimit(limit=3, remaining=1, reset_seconds=50.0)
    assert result.retry_after is None
    assert result.detail == "the Starter plan does not include flux-dev (it includes sdxl); upgrade to use it"


def test_a_picture_larger_than_the_plan_allows_is_refused() -> None:
    result = refused(admit(quoted(width=2048, height=512), standing()))
    assert result.code is RefusalCode.RESOLUTION_TOO_HIGH and result.counted
    assert result.rate == RateLimit(limit=3, remaining=2, reset_seconds=60.0)
    assert result.detail == "2048x512 is above the Starter plan's 1024 px per side"


def test_a_user_with_the_plans_waiting_jobs_is_told_to_retry_after_a_typical_job() -> None:
    result = refused(admit(quoted(), standing(queued=2), typical_seconds=7.2))
    assert result.code is RefusalCode.TOO_MANY_QUEUED_JOBS and result.counted
    assert result.retry_after == 8 and result.rate is not None and result.rate.remaining == 2
    assert result.detail.startswith("2 jobs already wait (the Starter plan allows 2 waiting and 1 running)")
    assert refused(admit(quoted(), standing(queued=2), typical_seconds=0.001)).retry_after == 1


def test_a_model_no_worker_online_serves_at_that_size_is_refused_once_the_fleet_is_known() -> None:
    small = Fleet({"sdxl": 512})
    result = refused(admit(quoted(width=768, height=768), standing(), small))
    assert result.code is RefusalCode.NO_CAPABLE_WORKER and result.counted
    assert result.detail == "no worker online can run sdxl at 768x768, and none has lately"
    assert (
        refused(admit(quoted(), standing(), Fleet({}))).detail
        == "no worker online can run sdxl at 1024x1024, and none has lately"
    )
    # Until the workers bucket has been read, the fleet says nothing.
    assert isinstance(admit(quoted(width=768, height=768), standing(), Fleet({}, known=False)), Admitted)


def test_a_job_above_todays_tokens_is_refused_until_the_quota_resets() -> None:
    result = refused(admit(quoted(), standing(used=6.5, reserved=2.75)))  # 1 token asked, 0.75 left
    assert result.code is RefusalCode.QUOTA_EXCEEDED and result.counted
    resets = datetime(2027, 1, 16, tzinfo=UTC)
    assert result.retry_after == math.ceil(resets.timestamp() - NOW)
    assert result.rate is not None and result.rate.remaining == 2
    assert result.detail == (
        "this job costs 1 tokens and 0.75 of today's 10 are left (6.5 used, 2.75 held by "
        f"unfinished jobs); the quota resets at {resets.isoformat()}"
    )
    # The quota is reached exactly, not exceeded: admitted.
    assert isinstance(admit(quoted(), standing(used=6.25, reserved=2.75)), Admitted)


def test_a_job_within_every_limit_is_admitted_as_quoted_with_the_request_counted() -> None:
    quote = quoted(width=512, height=512)
    result = admit(quote, standing(requests=(NOW - 59.5, NOW - 20), queued=1, used=5, reserved=4))
    assert isinstance(result, Admitted) and result.counted
    assert (result.quote, result.plan) == (quote, PLAN)
    assert result.rate == RateLimit(limit=3, remaining=0, reset_seconds=0.5)


def test_the_rules_the_gateway_shows_are_the_ones_admission_uses() -> None:
    assert rules.plan_allows(["sdxl"], CATALOG["sdxl"]) and not rules.plan_allows(["sdxl"], CATALOG["flux-dev"])
    assert rules.plan_allows(["*"], CATALOG["flux-dev"]) and rules.plan_allows([], CATALOG["echo"])
    zone = ZoneInfo("Europe/Berlin")
    day = rules.quota_day(NOW, zone)
    assert rules.quota_resets_at(day, zone) == datetime(2027, 1, 16, tzinfo=zone)
    assert rules.estimated_seconds(None, 2, 20.0) == 20.0  # running: one typical time
    # 5 ahead on 2 slots of 20 s, nothing observed yet: slots free every 10 s, the first after 2/3 of that.
    assert rules.estimated_seconds(5, 2, 20.0) == round((5 + 2 / 3) * 10 + 20, 3)
    assert rules.estimated_seconds(5, 0, 0.5) == 3.25  # no slot online counts as one: (5 + 1/2) x 0.5 + 0.5
    assert rules.estimated_seconds(5, 2, 20.0, 0.05) == round((5 + 2 / 3) * 20 + 20, 3)  # the observed rate


# --- the other commands, through the scheduler's state ----------------------------------------


def state_with_users() -> tuple[SchedulerState, uuid.UUID]:
    state = SchedulerState(wall_clock=lambda: NOW)
    upload_limits = {"uploads_per_day": 1, "upload_bytes_per_day": 1000, "max_upload_bytes": 800}
    for seq, plan in enumerate((msgspec.structs.replace(PLAN, tier="free", name="Free", **upload_limits), PLAN), 1):
        state.apply(
            PendingEvent(
                stream_type=StreamType.PLAN, stream_id=plan_stream_id(plan.tier), version=1, data=plan
            ).recorded(seq)
        )
    user_id = user_stream_id("web", "alice")
    state.apply(
        PendingEvent(
            stream_type=StreamType.USER,
            stream_id=user_id,
            version=1,
            data=UserRegistered(platform="web", platform_user_id="alice", plan="free"),
        ).recorded(3)
    )
    return state, user_id


def answer(state: SchedulerState, handle: Handler, cmd: object) -> Decision:
    handle(cmd, "_INBOX.test", "test")
    [(_, _, decision)] = state.take_effects().replies
    return decision


def submit(user_id: uuid.UUID, job_id: uuid.UUID) -> SubmitJob:
    return msgspec.structs.replace(command("echo"), user_id=user_id, job_id=job_id)


def key(user_id: uuid.UUID, replaces: uuid.UUID | None = None) -> IssueApiKey:
    return IssueApiKey(
        command_id=uuid.uuid4(), user_id=user_id, key_id=uuid.uuid4(), key_hash="h", key_prefix="p", replaces=replaces
    )


def upload(user_id: uuid.UUID, size: int) -> StoreUpload:
    return StoreUpload(
        command_id=uuid.uuid4(),
        user_id=user_id,
        upload_id=uuid.uuid4(),
        object_name="uploads/x",
        content_type="audio/wav",
        size_bytes=size,
        expires_at=datetime.fromtimestamp(NOW, UTC),
    )


def test_jobs_accounts_keys_and_uploads_refuse_with_their_codes() -> None:
    state, alice = state_with_users()
    codes: dict[RefusalCode, str] = {}

    def expect(code: RefusalCode, decision: Decision) -> None:
        assert not decision.ok and decision.code == code, decision
        assert decision.detail
        codes[code] = decision.detail

    job_id = uuid.uuid4()
    assert answer(state, state.submit, submit(alice, job_id)).ok
    assert answer(state, state.submit, submit(alice, job_id)).ok  # the same submit again: one job
    expect(RefusalCode.JOB_ID_CONFLICT, answer(state, state.submit, submit(uuid.uuid4(), job_id)))
    keyed, digest = uuid.uuid4(), msgspec.structs.replace
    assert answer(state, state.submit, digest(submit(alice, keyed), request_digest="a")).ok
    assert answer(state, state.submit, digest(submit(alice, keyed), request_digest="a")).ok  # the same request
    expect(
        RefusalCode.IDEMPOTENCY_KEY_REUSED,
        answer(state, state.submit, digest(submit(alice, keyed), request_digest="b")),
    )
    hook = UpdateWebhook(command_id=uuid.uuid4(), webhook_id=uuid.uuid4(), user_id=alice, enabled=False)
    expect(RefusalCode.WEBHOOK_NOT_FOUND, answer(state, state.handlers[UpdateWebhook], hook))
    expect(
        RefusalCode.JOB_NOT_FOUND,
        answer(state, state.cancel, CancelJob(command_id=uuid.uuid4(), job_id=job_id, user_id=uuid.uuid4())),
    )
    assert answer(state, state.cancel, CancelJob(command_id=uuid.uuid4(), job_id=job_id, user_id=alice)).ok
    expect(
        RefusalCode.JOB_TERMINAL,
        answer(state, state.cancel, CancelJob(command_id=uuid.uuid4(), job_id=job_id, user_id=alice)),
    )
    assert codes[RefusalCode.JOB_TERMINAL] == "job is already CANCELLED"

    expect(
        RefusalCode.UNKNOWN_PLAN,
        answer(
            state,
            state.create_user,
            CreateUser(
                command_id=uuid.uuid4(),
                platform="web",
                platform_user_id="bob",
                plan="gold",
                key_id=uuid.uuid4(),
                key_hash="h",
                key_prefix="p",
            ),
        ),
    )
    expect(
        RefusalCode.USER_NOT_FOUND,
        answer(
            state,
            state.change_user_plan,
            ChangeUserPlan(command_id=uuid.uuid4(), platform="web", platform_user_id="bob", plan="starter"),
        ),
    )
    expect(
        RefusalCode.INVALID_PLAN,
        answer(
            state,
            state.define_plan,
            DefinePlan(command_id=uuid.uuid4(), tier="starter", allowed_models=["no-such-model"]),
        ),
    )
    assert codes[RefusalCode.INVALID_PLAN] == "plan 'starter': unknown models no-such-model"

    expect(RefusalCode.USER_NOT_FOUND, answer(state, state.issue_api_key, key(uuid.uuid4())))
    expect(RefusalCode.KEY_NOT_FOUND, answer(state, state.issue_api_key, key(alice, replaces=uuid.uuid4())))
    for _ in range(MAX_KEYS_PER_USER):
        assert answer(state, state.issue_api_key, key(alice)).ok
    expect(RefusalCode.TOO_MANY_KEYS, answer(state, state.issue_api_key, key(alice)))
    expect(
        RefusalCode.KEY_NOT_FOUND,
        answer(state, state.revoke_key, RevokeKey(command_id=uuid.uuid4(), key_id=uuid.uuid4(), user_id=alice)),
    )

    expect(RefusalCode.UPLOAD_TOO_LARGE, answer(state, state.store_upload, upload(alice, 900)))
    assert answer(state, state.store_upload, upload(alice, 500)).ok
    decision = answer(state, state.store_upload, upload(alice, 100))  # the plan's one upload a day is used
    expect(RefusalCode.UPLOAD_QUOTA_EXCEEDED, decision)
    assert decision.retry_after == math.ceil(datetime(2027, 1, 16, tzinfo=UTC).timestamp() - NOW)
    expect(
        RefusalCode.UPLOAD_NOT_FOUND,
        answer(
            state, state.delete_upload, DeleteUpload(command_id=uuid.uuid4(), user_id=alice, upload_id=uuid.uuid4())
        ),
    )

    # With what admission covers above and the two the service answers for a command it sets aside
    # (UNSTORABLE_INPUT, COMMAND_FAILED: tests/e2e/test_poison.py), every code is exercised.
    admission_codes = {
        RefusalCode.SUBMIT_EXPIRED,
        RefusalCode.UNKNOWN_CAPABILITY,
        RefusalCode.UNKNOWN_MODEL,
        RefusalCode.VALIDATION_ERROR,
        RefusalCode.UNKNOWN_USER,
        RefusalCode.RATE_LIMITED,
        RefusalCode.MODEL_NOT_ALLOWED,
        RefusalCode.RESOLUTION_TOO_HIGH,
        RefusalCode.TOO_MANY_QUEUED_JOBS,
        RefusalCode.NO_CAPABLE_WORKER,
        RefusalCode.QUOTA_EXCEEDED,
    }
    service_codes = {RefusalCode.UNSTORABLE_INPUT, RefusalCode.COMMAND_FAILED}
    assert set(codes) | admission_codes | service_codes == set(RefusalCode)


def test_the_gateway_has_one_http_status_for_every_code() -> None:
    assert set(HTTP_STATUS) == set(RefusalCode)
    assert {
        code: http_status(code)
        for code in ("UNKNOWN_USER", "MODEL_NOT_ALLOWED", "UPLOAD_TOO_LARGE", "SUBMIT_EXPIRED", "COMMAND_FAILED")
    } == {
        "UNKNOWN_USER": 401,
        "MODEL_NOT_ALLOWED": 403,
        "UPLOAD_TOO_LARGE": 413,
        "SUBMIT_EXPIRED": 503,
        "COMMAND_FAILED": 500,
    }
    assert http_status("A_CODE_FROM_A_NEWER_SCHEDULER") == 500


def test_the_admitted_submit_is_recorded_in_the_rate_window_and_the_ledger() -> None:
    state, alice = state_with_users()
    decision = answer(state, state.submit, submit(alice, uuid.uuid4()))
    assert decision.ok and decision.rate == RateLimit(limit=3, remaining=2, reset_seconds=60.0)
    assert list(state.quota.requests[alice]) == [NOW]
    assert state.ledger[(alice, state.quota_day())].reserved == 0.0  # echo is free
    gated = msgspec.structs.replace(submit(alice, uuid.uuid4()), capability="image", model="flux-dev")
    refusal = answer(state, state.submit, gated)  # past the rate check: counted, though refused
    assert refusal.code == RefusalCode.MODEL_NOT_ALLOWED and list(state.quota.requests[alice]) == [NOW, NOW]
    assert answer(state, state.submit, msgspec.structs.replace(gated, job_id=uuid.uuid4())).ok is False
    assert answer(state, state.submit, submit(alice, uuid.uuid4())).code == RefusalCode.RATE_LIMITED
    assert list(state.quota.requests[alice]) == [NOW, NOW, NOW]  # a rate-limited request is not counted
