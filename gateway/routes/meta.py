"""Models, plans, health and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from base import db
from gateway.deps import ServicesDep
from gateway.schemas import Health, ModelList, PlanList, Readiness
from projector import queries
from scheduler import rules

router = APIRouter(tags=["platform"])


UNITS = {
    "image": "megapixel (1024x1024) per image",
    "video": "second of video at 1024x576",
    "text": "1000 generated tokens",
    "tts": "1000 characters",
    "stt": "minute of audio",
    "echo": "none",
}


@router.get("/api/v1/models", response_model=ModelList, summary="Models, their price and who serves them now")
async def models(services: ServicesDep) -> dict[str, Any]:
    """Every model with its pricing (tokens = base + rate x units, rounded up to 0.01; 1 token is
    one 1024x1024 image), the price of a request with the model's defaults and a 1000-character
    prompt, the plans that include it, and the workers online that serve it."""
    online = services.fleet.online()
    async with services.pool.acquire() as conn:
        plans = await queries.plans(conn)
    return {
        "models": [
            {
                "name": m.name,
                "capability": m.capability,
                "engine": m.engine,
                "description": m.description,
                "diagnostic": m.diagnostic,
                "default": services.catalog.is_default(m),
                "cost": {
                    "base_tokens": m.pricing.base,
                    "tokens_per_unit": m.pricing.rate,
                    "unit": UNITS[m.capability],
                    "default_request_tokens": m.cost({"prompt": "x" * 1000}),
                },
                "plans": [p["tier"] for p in plans if rules.plan_allows(p["allowed_models"], m)],
                "workers_online": sum(1 for w in online if m.name in w.models),
                "slots_online": sum(w.slots_for(m.name) for w in online),
            }
            for m in services.catalog
        ]
    }


@router.get("/api/v1/plans", response_model=PlanList, summary="Plans and their limits")
async def plans(services: ServicesDep) -> dict[str, Any]:
    async with services.pool.acquire() as conn:
        rows = await queries.plans(conn)
    return {"plans": [dict(r) for r in rows]}


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: NATS and PostgreSQL reachable",
    responses={503: {"model": Readiness, "description": "Not ready"}},
)
async def readyz(services: ServicesDep) -> JSONResponse:
    nats, postgres = services.nc.is_connected, await db.reachable(services.pool)
    checks = {"nats": nats, "postgres": postgres, "workers_online": len(services.fleet.online())}
    ready = nats and postgres
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503
    )
