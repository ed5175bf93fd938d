"""/api/v1/uploads: input files for jobs (audio to transcribe, images to transform).

An upload is stored like an artifact, in the artifacts object store, under a name that holds its
owner: `uploads/<user id>/<upload id>`. A job refers to it by `params.input_upload`. The gateway
checks that the upload is the submitter's own. It then gives the job `params.input` (object name,
content type, size), which is what the worker reads. Uploads expire with the bucket's TTL, like
artifacts.
"""

from __future__ import annotations

import io
import uuid
import wave
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from nats.js.api import ObjectMeta
from nats.js.errors import NotFoundError

from gateway.deps import CurrentPrincipal, Services, ServicesDep
from gateway.errors import Problem
from streams import subjects as s

router = APIRouter(prefix="/api/v1/uploads", tags=["uploads"])

ACCEPTED = {"audio/wav", "audio/x-wav", "audio/wave", "audio/mpeg", "audio/ogg", "audio/flac", "image/png",
            "image/jpeg", "image/webp"}


def object_name(user_id: uuid.UUID, upload_id: uuid.UUID) -> str:
    return f"uploads/{user_id}/{upload_id}"


def wav_seconds(data: bytes) -> float | None:
    """The length of a WAV file, or None when it is not one Python's wave module reads."""
    try:
        with wave.open(io.BytesIO(data)) as wav:
            return round(wav.getnframes() / wav.getframerate(), 3)
    except (wave.Error, EOFError, ZeroDivisionError):
        return None


@router.post("", status_code=201, summary="Upload an input file",
             openapi_extra={"requestBody": {"required": True, "content": {t: {} for t in sorted(ACCEPTED)}}})
async def upload(request: Request, services: ServicesDep, principal: CurrentPrincipal) -> JSONResponse:
    """Send the file as the raw body with its Content-Type. Refer to it from a job as
    `params.input_upload`; speech-to-text needs one."""
    content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if content_type not in ACCEPTED:
        raise Problem(415, "UNSUPPORTED_MEDIA_TYPE", f"uploads take {', '.join(sorted(ACCEPTED))}")
    data = await request.body()
    if not data:
        raise Problem(422, "EMPTY_UPLOAD", "the body is empty")
    seconds = wav_seconds(data) if content_type.startswith("audio/") and "wav" in content_type else None
    if content_type in ("audio/wav", "audio/x-wav", "audio/wave") and seconds is None:
        raise Problem(422, "INVALID_UPLOAD", "the body is not a WAV file")
    upload_id = uuid.uuid4()
    name = object_name(principal.user_id, upload_id)
    store = await services.nc.jetstream().object_store(s.ARTIFACTS_BUCKET)
    description = content_type if seconds is None else f"{content_type};seconds={seconds}"
    await store.put(name, data, meta=ObjectMeta(name=name, description=description))
    expires = datetime.now(UTC) + timedelta(seconds=services.settings.artifact_ttl_s)
    return JSONResponse({"upload_id": str(upload_id), "content_type": content_type, "size_bytes": len(data),
                         "duration_seconds": seconds, "expires_at": expires.isoformat()}, status_code=201)


async def resolve_input(services: Services, user_id: uuid.UUID, params: dict[str, Any]) -> dict[str, Any]:
    """The job's params with `input` filled in from `input_upload`, which must be the user's own."""
    if "input" in params:
        raise Problem(422, "VALIDATION_ERROR", "params.input is set by the platform; send params.input_upload")
    raw = params.get("input_upload")
    if raw is None:
        return params
    try:
        upload_id = uuid.UUID(str(raw))
    except ValueError:
        raise Problem(422, "VALIDATION_ERROR", "params.input_upload must be an upload id (a UUID)") from None
    name = object_name(user_id, upload_id)
    store = await services.nc.jetstream().object_store(s.ARTIFACTS_BUCKET)
    try:
        info = await store.get_info(name)
    except NotFoundError:  # another user's upload is indistinguishable from none
        raise Problem(404, "UPLOAD_NOT_FOUND", f"no upload {upload_id}") from None
    content_type, _, extra = (info.description or "application/octet-stream").partition(";")
    resolved = {**params, "input": {"object": name, "content_type": content_type, "size_bytes": info.size}}
    if extra.startswith("seconds=") and "duration_seconds" not in params:
        resolved["duration_seconds"] = float(extra.removeprefix("seconds="))  # what speech-to-text reserves for
    return resolved
