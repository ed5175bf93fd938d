"""/api/v1/quote: what a job would cost, before it is submitted (the website shows it as you type)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from base.catalog import QuoteRefused
from gateway.contract import problems
from gateway.decisions import quote_refusal
from gateway.deps import CurrentPrincipal, ServicesDep
from gateway.inputs import check_storable
from gateway.job_request import canonical
from gateway.routes.uploads import resolve_input
from gateway.schemas import JobCreate, QuoteRequest, QuoteView

router = APIRouter(prefix="/api/v1", tags=["platform"])


@router.post(
    "/quote",
    response_model=QuoteView,
    responses=problems(404, 422, _404="UPLOAD_NOT_FOUND", _422="UNKNOWN_CAPABILITY, UNKNOWN_MODEL, VALIDATION_ERROR"),
    summary="The price of a request, without submitting it",
)
async def quote(request: QuoteRequest, services: ServicesDep, principal: CurrentPrincipal) -> dict[str, Any]:
    """The model that would serve the request and the most it can cost, as the submit would reserve
    it; speech-to-text is priced by the uploaded audio's measured length (`params.input_upload`).
    Refusals are the submit's (UNKNOWN_MODEL, VALIDATION_ERROR, ...); plan and quota are not checked."""
    check_storable(request.params, "params")
    body = canonical(JobCreate(capability=request.capability, params=request.params, model=request.model))
    params = await resolve_input(services, principal.user_id, body.params)
    try:
        found = services.catalog.quote(body.capability, body.params.get("model"), params)
    except QuoteRefused as exc:  # ParamError too: VALIDATION_ERROR
        raise quote_refusal(exc) from None
    picture = found.width > 0
    return {
        "capability": found.model.capability,
        "model": found.model.name,
        "cost_tokens": found.cost,
        "width": found.width if picture else None,
        "height": found.height if picture else None,
    }
