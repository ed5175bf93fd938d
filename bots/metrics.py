"""The bots' metrics: results delivered to users, by frontend (telegram, discord) and outcome
(`delivered`; `undeliverable`: acknowledged without reaching the user; `retried`: it comes again)."""

from __future__ import annotations

from prometheus_client import Counter

from base.metrics import Children

DELIVERIES = Children(
    Counter(
        "tessera_bot_deliveries_total", "Job results a bot handled, by frontend and outcome", ["frontend", "outcome"]
    )
)
