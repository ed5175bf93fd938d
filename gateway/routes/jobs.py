"""/api/v1/jobs: submit, read, list, cancel and audit history of a job. Following a job as
server-sent events is `gateway.routes.job_stream`."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
import pydantic
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from base.catalog import Catalog, Model, QuoteRefused
from events.job import Job, JobStatus, fold
from events.types import JobQueued, JobRequeued, RecordedEvent
from gateway import queue_view
from gateway.contract import RATE_HEADERS, SECURED, problems
from gateway.decisions import decide, quote_refusal, rate_headers, refusal
from gateway.deps import CurrentPrincipal, Services, ServicesDep, holder_of
from gateway.errors import Problem
from gateway.inputs import check_storable, query_time
from gateway.job_request import canonical
from gateway.routes.uploads import resolve_input
from gateway.routes.webhooks import check_webhook_url
from gateway.schemas import EventView, JobAccepted, JobCancelled, JobList, JobView
from gateway.views import event_view, job_view
from gateway.webhook_schemas import JobCreateWithWebhook as JobCreate
from projector import queries
from scheduler import rules
from streams import subjects as s
from streams.messages import CancelJob, SubmitJob

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

INPUT_REQUIRED = {"stt"}  # capabilities that work on an uploaded file

# The submit route reads its body and headers itself (the hot path: FastAPI's per-request
# dependency and header solving was a fifth of the gateway's CPU per job), so the OpenAPI
# document is told about them here; gateway.contract puts the body's schema, from the catalog.
_SUBMIT_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object"},
                "example": {"capability": "tts", "params": {"prompt": "Hello from Tessera"}},
            }
        },
    },
    "security": SECURED,
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "maxLength": 200},
            "description": "Makes a retried submit safe: the same key with the same body returns the same job "
            "(for at least 24 h, across restarts); the same key with another body is 422 IDEMPOTENCY_KEY_REUSED; "
            "a concurrent duplicate waits for the first and gets its answer",
        },
        {
            "name": "Tessera-User-Ref",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": "With a frontend key: the user acted for, such as telegram:123456",
        },
    ],
}


def parse_job_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise Problem(400, "INVALID_JOB_ID", f"{raw!r} is not a job id (a UUID)") from None


def _digest(body: JobCreate, user_ref: str | None) -> str:
    """What an Idempotency-Key stands for: the request in its canonical form, and whom it is for.
    Not where the answer goes (`reply_context`): a bot that re-handles a chat message after a
    restart posts a new progress message, and its retry is still the same request."""
    request = {"body": body.model_dump(mode="json", exclude_none=True, exclude={"reply_context"}), "user_ref": user_ref}
    return hashlib.sha256(json.dumps(request, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def base_url(request: Request, services: Services) -> str:
    return (services.settings.public_url or str(request.base_url)).rstrip("/")


def _validate(body: JobCreate, settings_max_prompt: int, catalog: Catalog) -> None:
    prompt = body.params.get("prompt")
    if body.capability in INPUT_REQUIRED and prompt is None:  # the input is the job; a prompt is a hint
        prompt = ""
    elif prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        raise Problem(422, "MISSING_PROMPT", "params.prompt is required and must not be empty")
    if not isinstance(prompt, str):
        raise Problem(422, "VALIDATION_ERROR", "params.prompt must be a string")
    if len(prompt) > settings_max_prompt:
        raise Problem(422, "PROMPT_TOO_LONG", f"params.prompt is longer than {settings_max_prompt} characters")
    model = body.params.get("model")
    if model is not None and not isinstance(model, str):
        raise Problem(422, "VALIDATION_ERROR", "params.model must be a string")
    try:
        catalog.check_capability(body.capability)
    except QuoteRefused as exc:
        raise quote_refusal(exc) from None
    for name in ("frontend", "bot_id"):
        value = getattr(body, name)
        if value is not None and not s.is_token(value):
            raise Problem(422, "VALIDATION_ERROR", f"{name} may hold only letters, digits, '_' and '-'")


def _check_audio(reference: dict[str, Any], model: Model | None) -> None:
    """Refuse at submit an input the speech-to-text engine could not read, rather than fail it later."""
    content_type = reference.get("content_type", "")
    if not content_type.startswith("audio/"):
        raise Problem(422, "UNSUPPORTED_INPUT", f"speech-to-text needs audio, and the upload is {content_type}")
    if (
        model is not None
        and model.engine == "pocketsphinx"
        and (content_type != "audio/wav" or reference.get("bits_per_sample") != 16)
    ):
        raise Problem(
            422,
            "UNSUPPORTED_INPUT",
            f"{model.name} reads 16-bit PCM WAV files; convert the audio first "
            "(for example: ffmpeg -i in.mp3 -ac 1 -ar 16000 -sample_fmt s16 out.wav)",
        )


@router.post(
    "",
    status_code=202,
    response_model=JobAccepted,
    openapi_extra=_SUBMIT_OPENAPI,
    summary="Submit a job",
    responses={
        202: {
            "description": "Accepted and committed (or, with a reused Idempotency-Key, the job it made)",
            "headers": RATE_HEADERS,
        },
        **problems(
            403,
            404,
            409,
            415,
            422,
            429,
            503,
            _403="FRONTEND_FIELDS_FORBIDDEN, WRONG_FRONTEND, WRONG_BOT, MODEL_NOT_ALLOWED, RESOLUTION_TOO_HIGH",
            _404="UPLOAD_NOT_FOUND: params.input_upload is no upload of yours",
            _409="JOB_ID_CONFLICT",
            _422="MISSING_PROMPT, PROMPT_TOO_LONG, UNKNOWN_CAPABILITY, UNKNOWN_MODEL, INVALID_RESOLUTION, "
            "INPUT_REQUIRED, UNSUPPORTED_INPUT, INVALID_WEBHOOK_URL, VALIDATION_ERROR; IDEMPOTENCY_KEY_REUSED: "
            "the key was used with another body",
        ),
    },
)
async def submit_job(request: Request) -> Response:
    """Queue a job. Answers 202 once the scheduler's acceptance is committed in PostgreSQL.

    With an `Idempotency-Key`, sending the same request again returns the same job.
    """
    services: Services = request.app.state.services
    headers = request.headers
    holder = await holder_of(services, request)
    idempotency_key = headers.get("idempotency-key")
    if idempotency_key is not None and len(idempotency_key) > 200:
        raise Problem(422, "VALIDATION_ERROR", "the Idempotency-Key header is longer than 200 characters")
    tessera_user_ref = headers.get("tessera-user-ref")
    if "json" not in headers.get("content-type", "application/json"):
        raise Problem(415, "UNSUPPORTED_MEDIA_TYPE", "send the job as application/json")
    raw = await request.body()
    try:
        body = JobCreate.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        invalid = [e for e in exc.errors() if e["type"] == "json_invalid"]
        if invalid and "recursion limit" in str(invalid[0].get("ctx", {}).get("error", "")):
            raise Problem(422, "TOO_DEEP", "the request body is nested too deeply") from None
        if invalid:
            raise Problem(400, "MALFORMED_JSON", "the request body is not valid JSON") from None
        fields = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        raise Problem(422, "VALIDATION_ERROR", "the request does not match the schema", errors=fields) from None
    check_storable(body.params, "params")
    check_storable(body.reply_context, "reply_context")
    check_storable(body.user_ref or tessera_user_ref, "user_ref")
    body = canonical(body)
    _validate(body, services.settings.max_prompt_chars, services.catalog)
    holder.check_frontend_fields(body.frontend, body.bot_id, body.reply_context, body.user_ref)
    principal = holder.acting_for(body.user_ref or tessera_user_ref)
    params = await resolve_input(services, principal.user_id, body.params)
    if body.capability in INPUT_REQUIRED and "input" not in params:
        raise Problem(
            422,
            "INPUT_REQUIRED",
            f"{body.capability} needs an input file: upload it to /api/v1/uploads "
            "and send its id as params.input_upload",
        )
    if body.capability == "stt":
        try:
            model: Model | None = services.catalog.model_for("stt", body.params.get("model"))
        except QuoteRefused:
            model = None  # refused by the scheduler, with its code, once the input is known to be readable
        _check_audio(params["input"], model)
    if body.webhook is not None:
        check_webhook_url(body.webhook, services.settings)
    frontend = principal.frontend
    job_id = uuid.uuid5(principal.user_id, f"idempotency:{idempotency_key}") if idempotency_key else uuid.uuid4()
    timeout = services.settings.submit_timeout_s
    command = SubmitJob(
        command_id=uuid.uuid4(),
        job_id=job_id,
        user_id=principal.user_id,
        user_ref=principal.user_ref,
        frontend=frontend,
        bot_id=principal.bot_id,
        capability=body.capability,
        model=body.params.get("model"),
        params=params,
        reply_context=body.reply_context,
        deadline=datetime.now(UTC) + timedelta(seconds=timeout * 0.8),
        request_digest=_digest(body, principal.user_ref) if idempotency_key else None,
        webhook=body.webhook,
        webhook_events=[e.value for e in body.webhook_events_filter] if body.webhook_events_filter else None,
    )
    decision = await decide(
        services,
        s.CMD_SUBMIT,
        command,
        msg_id=f"submit:{command.command_id}",
        unconfirmed="the scheduler did not confirm the job in time; retrying with the same Idempotency-Key is safe",
    )
    if not decision.ok or decision.job is None:
        raise refusal(decision)
    services.wakers.submitted(principal.user_id)  # the user's event streams on this gateway follow it at once
    # The scheduler's summary has JobAccepted's fields. It is encoded here rather than through
    # response_model (which still documents it): submit is the hot path, and pydantic's
    # validate-then-serialise of the response is a sizeable share of its cost.
    return Response(
        msgspec.json.encode(decision.job),
        status_code=202,
        media_type="application/json",
        headers=rate_headers(decision),
    )


async def load_own_job(services: Services, job_id: uuid.UUID, user_id: uuid.UUID) -> tuple[Job, list[RecordedEvent]]:
    """The job folded from its events; another user's job is indistinguishable from none."""
    async with services.pool.acquire() as conn:
        records = await queries.job_events(conn, job_id)
    job = fold(records) if records else None
    if job is None or job.user_id != user_id:
        raise Problem(404, "JOB_NOT_FOUND", f"no job {job_id}")
    return job, records


async def position_and_estimate(
    services: Services, job: Job, records: list[RecordedEvent]
) -> tuple[int | None, float | None]:
    """Jobs ahead at this tier or above for the same capability, and the time to completion from
    the rate the slots that serve the model have been observed to serve it at (`rules.estimated_seconds`),
    both from this gateway's snapshot of the queue (at most a second old): no query per request."""
    if job.status.terminal or job.model not in services.catalog:
        return None, None
    snapshot = await queue_view.view(services.pool, {m.name: m.capability for m in services.catalog})
    position = None
    if job.status is JobStatus.QUEUED:
        queued_seq = next(r.seq for r in reversed(records) if isinstance(r.data, JobQueued | JobRequeued))
        position = snapshot.position(job.capability, job.priority, queued_seq)
    seconds = services.catalog.typical_seconds(job.model, snapshot.execution_s.get(job.model))
    slots = services.fleet.slots_for(job.model)
    return position, rules.estimated_seconds(position, slots, seconds, snapshot.per_s(job.model))


@router.get("/{job_id}", response_model=JobView, responses=problems(404, _404="JOB_NOT_FOUND"), summary="Read a job")
async def get_job(job_id: str, request: Request, services: ServicesDep, principal: CurrentPrincipal) -> JobView:
    job, records = await load_own_job(services, parse_job_id(job_id), principal.user_id)
    position, estimate = await position_and_estimate(services, job, records)
    return job_view(job, records, base_url(request, services), position, estimate, services.links)


@router.get("", response_model=JobList, summary="List your jobs, newest first")
async def list_jobs(
    services: ServicesDep,
    principal: CurrentPrincipal,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[
        str | None, Query(json_schema_extra={"format": "date-time"}, description="Only jobs created before this time")
    ] = None,
    status: Annotated[JobStatus | None, Query()] = None,
    capability: Annotated[str | None, Query(max_length=20, description="Only jobs of this capability")] = None,
) -> dict[str, Any]:
    until = query_time(before, "before")
    async with services.pool.acquire() as conn:
        rows = await queries.jobs_of(
            conn, principal.user_id, limit, until, status.value if status else None, capability
        )
    jobs = [
        {
            "job_id": r["id"],
            "status": r["status"],
            "capability": r["capability"],
            "model": r["model"],
            "cost_tokens": float(r["cost_tokens"]),
            "frontend": r["frontend"],
            "bot_id": r["bot_id"],
            "worker_id": r["worker_id"],
            "created_at": r["created_at"],
            "ended_at": r["ended_at"],
            "error": r["error"],
        }
        for r in rows
    ]
    return {"jobs": jobs, "next_before": jobs[-1]["created_at"] if len(jobs) == limit else None}


@router.delete(
    "/{job_id}",
    status_code=202,
    response_model=JobCancelled,
    responses=problems(404, 409, 503, _404="JOB_NOT_FOUND", _409="JOB_TERMINAL: it has already finished"),
    summary="Cancel a job",
)
async def cancel_job(job_id: str, services: ServicesDep, principal: CurrentPrincipal) -> dict[str, Any]:
    """Cancel a queued or running job; 409 when it has already finished."""
    parsed = parse_job_id(job_id)
    command = CancelJob(command_id=uuid.uuid4(), job_id=parsed, user_id=principal.user_id)
    decision = await decide(
        services,
        s.CMD_CANCEL,
        command,
        msg_id=f"cancel:{command.command_id}",
        unconfirmed="the scheduler did not confirm the cancel in time",
    )
    if not decision.ok:
        raise refusal(decision, **({"job_status": decision.job.status} if decision.job else {}))
    return {"job_id": parsed, "status": decision.job.status if decision.job else "CANCELLED"}


@router.get(
    "/{job_id}/events",
    response_model=list[EventView],
    responses=problems(404, _404="JOB_NOT_FOUND"),
    summary="The job's full history (audit)",
)
async def job_history(job_id: str, services: ServicesDep, principal: CurrentPrincipal) -> list[EventView]:
    _, records = await load_own_job(services, parse_job_id(job_id), principal.user_id)
    return [event_view(r) for r in records]
