"""/api/v1/artifacts/{id}: the bytes of a job's output, to its owner, or to anyone holding a signed
link to it that has not expired (gateway.links)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from nats.js.errors import NotFoundError

from gateway.contract import SECURED, problems
from gateway.deps import ServicesDep, holder_of
from gateway.errors import Problem
from projector import queries
from streams import subjects as s

router = APIRouter(prefix="/api/v1/artifacts", tags=["artifacts"])


def _artifact_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise Problem(400, "INVALID_ARTIFACT_ID", f"{raw!r} is not an artifact id (a UUID)") from None


@router.get(
    "/{artifact_id}",
    summary="Download an artifact",
    response_class=Response,
    responses={
        200: {"content": {"audio/wav": {}, "image/png": {}, "image/webp": {}, "text/plain": {}}},
        **problems(
            401,
            403,
            404,
            410,
            _403="LINK_EXPIRED, LINK_INVALID",
            _404="ARTIFACT_NOT_FOUND",
            _410="ARTIFACT_EXPIRED",
        ),
    },
    openapi_extra={"security": [*SECURED, {}]},  # a signed link needs no key
)
async def get_artifact(
    artifact_id: str,
    request: Request,
    services: ServicesDep,
    expires: Annotated[str | None, Query(description="A signed link's expiry (Unix seconds)")] = None,
    signature: Annotated[str | None, Query(description="A signed link's signature; no key is needed then")] = None,
    tessera_user_ref: Annotated[str | None, Header(description="With a frontend key: the user acted for")] = None,
) -> Response:
    """The artifact's bytes: with the key of its owner (or of a frontend acting for them), or with no
    key through its `signed_url` until that link expires (403 LINK_EXPIRED, LINK_INVALID)."""
    owner: uuid.UUID | None = None
    if expires is None and signature is None:  # no link: the owner's key
        owner = (await holder_of(services, request)).acting_for(tessera_user_ref).user_id
    parsed = _artifact_id(artifact_id)
    if owner is None:
        services.links.check(parsed, expires, signature)
    async with services.pool.acquire() as conn:
        row = await queries.artifact(conn, parsed)
    if row is None and await queries.wait_for_projection(services.pool):  # just completed: let the read model catch up
        async with services.pool.acquire() as conn:
            row = await queries.artifact(conn, parsed)
    if row is None or (owner is not None and row["user_id"] != owner):
        raise Problem(404, "ARTIFACT_NOT_FOUND", f"no artifact {artifact_id}")
    if row["expired_at"] is not None:
        raise Problem(410, "ARTIFACT_EXPIRED", f"artifact {artifact_id} expired at {row['expired_at'].isoformat()}")
    filename = f"{row['job_id']}-{row['id']}.{row['format']}"
    headers = {"Content-Disposition": f'inline; filename="{filename}"'}
    if row["object_name"] is None:
        return Response((row["inline_text"] or "").encode(), media_type=row["content_type"], headers=headers)
    store = await services.nc.jetstream().object_store(s.ARTIFACTS_BUCKET)
    try:
        result = await store.get(row["object_name"])
    except NotFoundError:
        raise Problem(404, "ARTIFACT_EXPIRED", "the artifact's content is no longer stored") from None
    return Response(result.data or b"", media_type=row["content_type"], headers=headers)
