"""/api/v1/artifacts/{id}: the bytes of a job's output, to its owner only."""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from fastapi.responses import Response
from nats.js.errors import NotFoundError

from gateway.deps import CurrentPrincipal, ServicesDep
from gateway.errors import Problem
from projector import queries
from streams import subjects as s

router = APIRouter(prefix="/api/v1/artifacts", tags=["artifacts"])


@router.get(
    "/{artifact_id}",
    summary="Download an artifact",
    response_class=Response,
    responses={200: {"content": {"audio/wav": {}, "image/png": {}, "text/plain": {}}}},
)
async def get_artifact(artifact_id: str, services: ServicesDep, principal: CurrentPrincipal) -> Response:
    try:
        parsed = uuid.UUID(artifact_id)
    except ValueError:
        raise Problem(400, "INVALID_ARTIFACT_ID", f"{artifact_id!r} is not an artifact id (a UUID)") from None
    async with services.pool.acquire() as conn:
        row = await queries.artifact(conn, parsed)
    if row is None and await queries.wait_for_projection(services.pool):  # just completed: let the read model catch up
        async with services.pool.acquire() as conn:
            row = await queries.artifact(conn, parsed)
    if row is None or row["user_id"] != principal.user_id:
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
