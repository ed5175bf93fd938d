"""What every process's metrics share: the buckets, a cheap way to reach a labelled child, and
the readiness of the process as gauges (set by the side port at each scrape).

Naming follows Prometheus's advice: a `tessera_` prefix, base units (seconds, bytes), `_total`
on counters, and labels whose values are few (a capability, a plan tier, a worker, a route
template; never a job or a user). Each layer defines its own metrics in its own `metrics`
module; this one holds what they have in common.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

from prometheus_client import Counter, Gauge, Histogram

from base.health import Readiness

# Job durations: GPU jobs take seconds to minutes; the queue timeout is 30 minutes.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0)
# Request and commit latencies: milliseconds to seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

M = TypeVar("M", Counter, Gauge, Histogram)


class Children(Generic[M]):
    """The labelled children of one metric, kept in a dict: `labels()` takes a lock and builds a
    tuple on every call, a dict lookup does not. The hot paths reach their children through this."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._children: dict[Hashable, M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


READY = Gauge("tessera_ready", "1 when the service says it can do its work (its /readyz), else 0", ["service"])
READINESS_CHECK = Gauge(
    "tessera_readiness_check",
    "Each check of the service's readiness (nats, database, state, ...): 1 passed, 0 failed",
    ["service", "check"],
)


def record_readiness(service: str, readiness: Readiness) -> None:
    """Publish a readiness as gauges (`database` 0 is how the database-unreachable alert sees it)."""
    READY.labels(service).set(1 if readiness.ready else 0)
    for check, ok in readiness.checks.items():
        READINESS_CHECK.labels(service, check).set(1 if ok else 0)
