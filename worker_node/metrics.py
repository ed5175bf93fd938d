"""A worker's own metrics: the jobs it ran, by capability and outcome (`COMPLETED` or the failure
code it reported), and, read at each scrape, its slots and the jobs it runs now. The fleet as the
scheduler sees it (heartbeats, GPU memory) is the leader scheduler's to export."""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sized
from typing import Protocol

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from base.metrics import Children

JOBS = Children(
    Counter(
        "tessera_worker_jobs_total",
        "Attempts this worker ran to their end, by capability and outcome (COMPLETED or the failure code)",
        ["capability", "outcome"],
    )
)


class Running(Protocol):
    worker_id: str
    slots: int

    @property
    def running(self) -> Sized: ...


_workers: weakref.WeakSet[Running] = weakref.WeakSet()


def watch(worker: Running) -> None:
    _workers.add(worker)


class WorkerCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        running = GaugeMetricFamily("tessera_worker_jobs_running", "Jobs this worker runs now", labels=["worker"])
        slots = GaugeMetricFamily("tessera_worker_process_slots", "Jobs this worker runs at once", labels=["worker"])
        for worker in list(_workers):
            running.add_metric([worker.worker_id], len(worker.running))
            slots.add_metric([worker.worker_id], worker.slots)
        yield running
        yield slots


REGISTRY.register(WorkerCollector())
