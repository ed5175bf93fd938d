"""The webhook service's metrics: delivery attempts by kind of target (an account's endpoint or a
job's own URL) and outcome (`delivered`; `retry`: it will be tried again; `gone`: 410, the endpoint
is disabled; `failed`: out of attempts), and how long receivers took to answer."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from base.metrics import LATENCY_BUCKETS, Children

ATTEMPTS = Children(
    Counter(
        "tessera_webhook_deliveries_total",
        "Webhook delivery attempts, by target (endpoint, job) and outcome",
        ["target", "outcome"],
    )
)
LATENCY = Histogram(
    "tessera_webhook_delivery_duration_seconds",
    "How long a receiver took to answer a delivery (or to fail to)",
    buckets=LATENCY_BUCKETS,
)


def attempted(target: str, outcome: str, latency_ms: float) -> None:
    ATTEMPTS("job" if target.startswith("job:") else "endpoint", outcome).inc()
    LATENCY.observe(latency_ms / 1000)
