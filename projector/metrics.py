"""The projector's metrics: its position in the event log and how far behind the log's head it is
(the head as the scheduler's `tessera.committed` messages announce it), read at each scrape."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class Follower(Protocol):
    position: int  # the last event folded
    head: int  # the newest sequence it has heard of


_projectors: weakref.WeakSet[Follower] = weakref.WeakSet()


def watch(projector: Follower) -> None:
    _projectors.add(projector)


class ProjectorCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        position = GaugeMetricFamily(
            "tessera_projector_position", "The last event sequence folded into the read models"
        )
        lag = GaugeMetricFamily("tessera_projector_lag_events", "Committed events not yet folded into the read models")
        projectors = list(_projectors)
        if projectors:  # one per process (a test may hold more: the furthest speaks)
            projector = max(projectors, key=lambda p: p.position)
            position.add_metric([], projector.position)
            lag.add_metric([], max(projector.head - projector.position, 0))
        yield position
        yield lag


REGISTRY.register(ProjectorCollector())
