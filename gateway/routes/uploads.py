"""/api/v1/uploads: input files for jobs (audio to transcribe, images to transform).

An upload is stored like an artifact, in the artifacts object store, under a name that holds its
owner: `uploads/<user id>/<upload id>`. A job refers to it by `params.input_upload`. The gateway
checks that the upload is the submitter's own. It then gives the job `params.input` (object name,
content type, size, and for a WAV file its measured length and sample width), which is what the
worker reads and what speech-to-text is priced by. Uploads expire with the bucket's TTL, like
artifacts.

The content type is read from the file's first bytes, not taken from the request's header: a
file whose bytes say something else than its header is refused.
"""

from __future__ import annotations

import contextlib
import io
import uuid
import wave
from datetime import UTC, datetime, timedelta
from typing import Any

import nats.errors
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from nats.js.api import ObjectMeta
from nats.js.errors import NotFoundError

from gateway.contract import problems
from gateway.decisions import carried_out
from gateway.deps import CurrentPrincipal, Services, ServicesDep
from gateway.errors import Problem
from gateway.schemas import UploadDeleted, UploadList, UploadStored
from projector import queries
from streams import subjects as s
from streams.messages import DeleteUpload, StoreUpload

router = APIRouter(prefix="/api/v1/uploads", tags=["uploads"])

ACCEPTED = {
    "audio/wav",
    "audio/x-wav",
    "audio/wave",
    "audio/mpeg",
    "audio/ogg",
    "audio/flac",
    "image/png",
    "image/jpeg",
    "image/webp",
}


def object_name(user_id: uuid.UUID, upload_id: uuid.UUID) -> str:
    return f"uploads/{user_id}/{upload_id}"


WAV_TYPES = {"audio/wav", "audio/x-wav", "audio/wave"}


def sniff(data: bytes) -> str | None:
    """The content type the file's own bytes announce (its magic number), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "audio/wav"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "audio/mpeg"
    if data[:4] == b"OggS":
        return "audio/ogg"
    if data[:4] == b"fLaC":
        return "audio/flac"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    return None


def wav_facts(data: bytes) -> tuple[float, int] | None:
    """(seconds, bits per sample) of a WAV file, or None when Python's wave module cannot read it."""
    try:
        with wave.open(io.BytesIO(data)) as wav:
            return round(wav.getnframes() / wav.getframerate(), 3), 8 * wav.getsampwidth()
    except (wave.Error, EOFError, ZeroDivisionError):
        return None


MULTIPART_FIELD = "file"
_UNTYPED = {"", "application/octet-stream"}  # what a browser sends for a file type it does not know


async def _file_of(request: Request) -> tuple[bytes, str]:
    """The uploaded bytes and the content type they are declared as: the raw body and its header, or
    the `file` part of a multipart/form-data body and that part's type."""
    content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        return await request.body(), content_type
    async with request.form(max_files=1, max_fields=20) as form:
        part = form.get(MULTIPART_FIELD)
        if part is None or isinstance(part, str):
            raise Problem(
                422,
                "UPLOAD_FILE_MISSING",
                f"a multipart/form-data upload sends its file in a part named {MULTIPART_FIELD!r}",
            )
        data = await part.read()
        declared = (part.content_type or "").split(";")[0].strip().lower()
    if declared in _UNTYPED:  # the bytes say what it is; it must still be a type uploads take
        declared = sniff(data) or declared
    return data, declared


@router.post(
    "",
    status_code=201,
    response_model=UploadStored,
    summary="Upload an input file",
    responses=problems(
        400,
        413,
        415,
        422,
        429,
        503,
        _400="a multipart/form-data body that cannot be read",
        _422="EMPTY_UPLOAD, INVALID_UPLOAD (the bytes are not a file of the type sent), UPLOAD_FILE_MISSING",
        _429="UPLOAD_QUOTA_EXCEEDED",
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                **{t: {} for t in sorted(ACCEPTED)},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [MULTIPART_FIELD],
                        "properties": {MULTIPART_FIELD: {"type": "string", "format": "binary"}},
                    }
                },
            },
        }
    },
)
async def upload(request: Request, services: ServicesDep, principal: CurrentPrincipal) -> JSONResponse:
    """Send the file as the raw body with its Content-Type, or as the `file` part of a
    multipart/form-data body (as a browser's form sends it). Refer to it from a job as
    `params.input_upload`; speech-to-text needs one."""
    data, content_type = await _file_of(request)
    if content_type not in ACCEPTED:
        raise Problem(415, "UNSUPPORTED_MEDIA_TYPE", f"uploads take {', '.join(sorted(ACCEPTED))}")
    if not data:
        raise Problem(422, "EMPTY_UPLOAD", "the file is empty")
    declared = "audio/wav" if content_type in WAV_TYPES else content_type
    found = sniff(data)
    if found != declared:
        raise Problem(
            422, "INVALID_UPLOAD", f"the file is not a {declared} file" + (f" (its bytes say {found})" if found else "")
        )
    content_type = found
    facts = wav_facts(data) if content_type == "audio/wav" else None
    if content_type == "audio/wav" and facts is None:
        raise Problem(422, "INVALID_UPLOAD", "the file is not a WAV file Tessera can read")
    seconds = facts[0] if facts else None
    upload_id = uuid.uuid4()
    name = object_name(principal.user_id, upload_id)
    store = await services.nc.jetstream().object_store(s.ARTIFACTS_BUCKET)
    description = content_type if facts is None else f"{content_type};seconds={facts[0]};bits={facts[1]}"
    await store.put(name, data, meta=ObjectMeta(name=name, description=description))
    expires = datetime.now(UTC) + timedelta(seconds=services.settings.artifact_ttl_s)
    # Stored first, then counted against the plan (one writer decides, so two uploads at once
    # cannot both take the last one of the day); refused, it is removed again.
    command = StoreUpload(
        command_id=uuid.uuid4(),
        user_id=principal.user_id,
        upload_id=upload_id,
        object_name=name,
        content_type=content_type,
        size_bytes=len(data),
        duration_seconds=seconds,
        bits_per_sample=facts[1] if facts else None,
        expires_at=expires,
    )
    try:
        await carried_out(services, s.CMD_UPLOAD_STORE, command, msg_id=f"upload:{upload_id}")
    except Problem:  # refused, or not confirmed: not kept
        with contextlib.suppress(NotFoundError, nats.errors.Error):
            await store.delete(name)
        raise
    return JSONResponse(
        {
            "upload_id": str(upload_id),
            "content_type": content_type,
            "size_bytes": len(data),
            "duration_seconds": seconds,
            "expires_at": expires.isoformat(),
        },
        status_code=201,
    )


@router.get("", response_model=UploadList, summary="Your uploads that are still stored, newest first")
async def list_uploads(services: ServicesDep, principal: CurrentPrincipal) -> dict[str, Any]:
    async with services.pool.acquire() as conn:
        rows = await queries.uploads_of(conn, principal.user_id)
    return {
        "uploads": [
            {
                "upload_id": r["id"],
                "content_type": r["content_type"],
                "size_bytes": r["size_bytes"],
                "duration_seconds": r["duration_seconds"],
                "created_at": r["created_at"],
                "expires_at": r["expires_at"],
            }
            for r in rows
        ]
    }


@router.delete(
    "/{upload_id}",
    response_model=UploadDeleted,
    responses=problems(404, 503, _404="UPLOAD_NOT_FOUND"),
    summary="Delete an upload now",
)
async def delete_upload(upload_id: str, services: ServicesDep, principal: CurrentPrincipal) -> dict[str, Any]:
    try:
        parsed = uuid.UUID(upload_id)
    except ValueError:
        raise Problem(400, "INVALID_UPLOAD_ID", f"{upload_id!r} is not an upload id (a UUID)") from None
    command = DeleteUpload(command_id=uuid.uuid4(), user_id=principal.user_id, upload_id=parsed)
    await carried_out(services, s.CMD_UPLOAD_DELETE, command, msg_id=f"upload-delete:{command.command_id}")
    return {"upload_id": parsed, "deleted": True}


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
    content_type, *extras = (info.description or "application/octet-stream").split(";")
    facts = dict(extra.partition("=")[::2] for extra in extras)
    reference: dict[str, Any] = {"object": name, "content_type": content_type, "size_bytes": info.size}
    if "seconds" in facts:  # measured at upload: what speech-to-text reserves for and is capped by
        reference["duration_seconds"] = float(facts["seconds"])
    if "bits" in facts:
        reference["bits_per_sample"] = int(facts["bits"])
    return {**params, "input": reference}
