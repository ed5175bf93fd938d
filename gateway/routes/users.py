"""/api/v1/user/me: who you are, your plan, its limits and today's quota."""

from __future__ import annotations

import time
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter

from gateway.deps import CurrentPrincipal, ServicesDep
from gateway.schemas import Me
from projector import queries
from scheduler import rules

router = APIRouter(prefix="/api/v1/user", tags=["user"])


@router.get("/me", response_model=Me, summary="Your plan, limits and today's usage")
async def me(services: ServicesDep, principal: CurrentPrincipal) -> dict[str, Any]:
    """Today is the quota day (UTC unless TESSERA_QUOTA_TIMEZONE says otherwise). `tokens_reserved`
    are held by your queued and running jobs: charged when they complete, released otherwise."""
    zone = ZoneInfo(services.settings.quota_timezone)
    today = rules.quota_day(time.time(), zone)
    resets_at = rules.quota_resets_at(today, zone)
    async with services.pool.acquire() as conn:
        user = await queries.user(conn, principal.user_id)
        plan = await queries.plan(conn, user["plan_tier"] if user else "free")
        usage = await queries.usage_on(conn, principal.user_id, today)
        active = await queries.unfinished(conn, principal.user_id, today)
    used = float(usage["tokens_used"]) if usage else 0.0
    limit = plan["daily_token_limit"] if plan else None
    remaining = None if limit is None else max(0.0, round(limit - used - active["reserved"], 2))
    by_capability = {
        group: float(usage[f"tokens_{group}"]) if usage else 0.0 for group in ("image", "video", "text", "audio")
    }
    return {
        "user_id": principal.user_id,
        "platform": user["platform"] if user else (principal.user_ref or ":").split(":")[0],
        "platform_user_id": user["platform_user_id"] if user else (principal.user_ref or ":").split(":", 1)[1],
        "display_name": user["display_name"] if user else None,
        "registered": user is not None,
        "plan": dict(plan) if plan else None,
        "limits": {
            "daily_tokens": limit,
            "requests_per_minute": plan["requests_per_minute"] if plan else None,
            "max_concurrent_jobs": plan["max_concurrent_jobs"] if plan else None,
            "max_queued_jobs": plan["max_queued_jobs"] if plan else None,
            "max_resolution": plan["max_resolution"] if plan else None,
            "allowed_models": plan["allowed_models"] if plan else [],
            "uploads_per_day": plan["uploads_per_day"] if plan else None,
            "upload_bytes_per_day": plan["upload_bytes_per_day"] if plan else None,
            "max_upload_bytes": plan["max_upload_bytes"] if plan else None,
        },
        "today": {
            "date": today.isoformat(),
            "resets_at": resets_at.isoformat(),
            "tokens_used": used,
            "tokens_reserved": active["reserved"],
            "tokens_remaining": remaining,
            "tokens_by_capability": by_capability,
            "jobs_completed": usage["jobs_completed"] if usage else 0,
            "jobs_failed": usage["jobs_failed"] if usage else 0,
        },
        "jobs_running": active["running"],
        "jobs_queued": active["queued"],
    }
