"""/api/v1/user/me: who you are, your plan and today's usage."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway import queries
from gateway.deps import CurrentPrincipal, ServicesDep

router = APIRouter(prefix="/api/v1/user", tags=["user"])


@router.get("/me", summary="Your plan, limits and today's usage")
async def me(services: ServicesDep, principal: CurrentPrincipal) -> dict[str, Any]:
    async with services.pool.acquire() as conn:
        user = await queries.user(conn, principal.user_id)
        plan = await queries.plan(conn, user["plan_tier"] if user else "free")
        usage = await queries.usage_today(conn, principal.user_id)
        counts = await queries.job_counts(conn, principal.user_id)
    used = float(usage["tokens_used"]) if usage else 0.0
    limit = plan["daily_token_limit"] if plan else 0
    return {
        "user_id": principal.user_id,
        "platform": user["platform"] if user else (principal.user_ref or ":").split(":")[0],
        "platform_user_id": user["platform_user_id"] if user else (principal.user_ref or ":").split(":", 1)[1],
        "display_name": user["display_name"] if user else None,
        "registered": user is not None,
        "plan": dict(plan) if plan else None,
        "today": {"tokens_used": used, "tokens_remaining": max(limit - used, 0),
                  "jobs_completed": usage["jobs_completed"] if usage else 0,
                  "jobs_failed": usage["jobs_failed"] if usage else 0},
        "jobs_running": counts.get("RUNNING", 0),
        "jobs_queued": counts.get("QUEUED", 0),
    }
