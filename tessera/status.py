"""`tessera status`: the platform on one terminal screen.

Read from where an operator's tools read it: each process's side port (`/readyz` for its health
and role, the leader scheduler's and the projector's `/metrics` for the fleet, the queue and the
lag) and the `jobs` read model for today's jobs. Nothing here writes.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from base import db
from projector import queries

Labels = tuple[tuple[str, str], ...]


@dataclass
class Health:
    name: str
    url: str
    status: str  # ready, not ready, down
    missing: list[str] = field(default_factory=list)
    role: str = ""  # a scheduler's: leader, standby, ...


@dataclass
class Snapshot:
    at: datetime
    services: list[Health]
    samples: dict[str, list[tuple[dict[str, str], float]]]  # metric -> (labels, value), leader and projector
    today: dict[str, int] | None  # jobs submitted today by status; None when the database did not answer
    zone: str = "UTC"

    def values(self, name: str) -> list[tuple[dict[str, str], float]]:
        return self.samples.get(name, [])

    def total(self, name: str) -> float:
        return sum(value for _, value in self.values(name))


async def _health(client: httpx.AsyncClient, name: str, url: str) -> tuple[Health, str]:
    """A process's readiness, and its metrics when they matter to the screen ("" otherwise)."""
    try:
        ready = await client.get(f"{url}/readyz")
        body = ready.json()
    except (httpx.HTTPError, ValueError):
        return Health(name, url, "down"), ""
    health = Health(
        name,
        url,
        "ready" if ready.status_code == 200 else "not ready",
        missing=list(body.get("missing", [])),
        role=str(body.get("role", "")),
    )
    text = ""
    if health.role == "leader" or name == "projector":
        try:
            text = (await client.get(f"{url}/metrics")).text
        except httpx.HTTPError:
            pass
    return health, text


async def gather(services: Mapping[str, str], database_url: str | None, zone: str = "UTC") -> Snapshot:
    """Everything the screen shows, asked of every process at once."""
    tz = ZoneInfo(zone)
    now = datetime.now(tz)
    async with httpx.AsyncClient(timeout=3) as client:
        answers = await asyncio.gather(*(_health(client, name, url) for name, url in services.items()))
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for _, text in answers:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[sample.name].append((dict(sample.labels), float(sample.value)))
    today = None
    if database_url:
        try:
            async with db.connection(database_url) as conn:
                midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
                today = await queries.jobs_since(conn, midnight)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            today = None
    return Snapshot(at=now, services=[h for h, _ in answers], samples=dict(samples), today=today, zone=zone)


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _by(snapshot: Snapshot, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    return {tuple(labels.get(k, "") for k in keys): value for labels, value in snapshot.values(name)}


def _services(snapshot: Snapshot) -> list[str]:
    width = max((len(h.name) for h in snapshot.services), default=8)
    out = ["Services"]
    for h in snapshot.services:
        role = f" ({h.role})" if h.role else ""
        missing = f"  missing: {', '.join(h.missing)}" if h.missing else ""
        out.append(f"  {h.name:<{width}}  {h.status + role:<20} {h.url}{missing}")
    leaders = [name for (name,), v in _by(snapshot, "tessera_scheduler_leader", "scheduler").items() if v == 1]
    standbys = [h.name for h in snapshot.services if h.role == "standby"]
    out.append(f"Scheduler: leader {', '.join(leaders) or 'NONE'}; standby {', '.join(standbys) or 'none'}")
    return out


def _workers(snapshot: Snapshot) -> list[str]:
    slots = _by(snapshot, "tessera_worker_slots", "worker")
    busy = _by(snapshot, "tessera_worker_slots_busy", "worker")
    models = _by(snapshot, "tessera_worker_loaded_models", "worker")
    seen = _by(snapshot, "tessera_worker_last_heartbeat_timestamp_seconds", "worker")
    used = _by(snapshot, "tessera_worker_gpu_memory_used_bytes", "worker", "gpu")
    total = _by(snapshot, "tessera_worker_gpu_memory_total_bytes", "worker", "gpu")
    util = _by(snapshot, "tessera_worker_gpu_utilization_ratio", "worker", "gpu")
    out = [f"Workers: {snapshot.total('tessera_workers_online'):.0f} online"]
    if slots:
        out.append(f"  {'worker':<20} {'busy/slots':>10} {'loaded':>6} {'heartbeat':>10}  GPU")
    for (worker,) in sorted(slots):
        gpus = [
            f"gpu{gpu} {used[(w, gpu)] / 2**30:.1f}/{total.get((w, gpu), 0) / 2**30:.1f} GiB "
            f"{util.get((w, gpu), 0) * 100:.0f}%"
            for (w, gpu) in sorted(used)
            if w == worker
        ]
        ago = _age(max(snapshot.at.timestamp() - seen.get((worker,), 0), 0))
        out.append(
            f"  {worker:<20} {busy.get((worker,), 0):>4.0f}/{slots[(worker,)]:<5.0f} "
            f"{models.get((worker,), 0):>6.0f} {ago + ' ago':>10}  {', '.join(gpus) or 'no GPU'}"
        )
    return out


def _queue(snapshot: Snapshot) -> list[str]:
    depth = _by(snapshot, "tessera_queue_depth", "tier", "model")
    oldest = _by(snapshot, "tessera_queue_oldest_wait_seconds", "tier", "model")
    per_tier: dict[str, float] = defaultdict(float)
    for (tier, _model), count in depth.items():
        per_tier[tier] += count
    out = [f"Queue: {sum(per_tier.values()):.0f} waiting"]
    for tier in sorted(per_tier):
        rows = [(m, c) for (t, m), c in depth.items() if t == tier and c]
        detail = ", ".join(f"{m} {c:.0f} (oldest {_age(oldest.get((tier, m), 0))})" for m, c in sorted(rows))
        out.append(f"  {tier:<10} {per_tier[tier]:>5.0f}  {detail}")
    return out


def _lag_and_today(snapshot: Snapshot) -> list[str]:
    outbox = snapshot.values("tessera_outbox_lag_events")
    projector = snapshot.values("tessera_projector_lag_events")
    lag = (
        f"Lag: outbox {snapshot.total('tessera_outbox_lag_events'):.0f} events"
        if outbox
        else "Lag: outbox unknown (no leader)"
    )
    lag += (
        f", projector {snapshot.total('tessera_projector_lag_events'):.0f} events"
        if projector
        else ", projector unknown"
    )
    if snapshot.today is None:
        return [lag, "Today: the database did not answer"]
    counts = snapshot.today
    done, failed = counts.get("COMPLETED", 0), counts.get("FAILED", 0)
    waiting = counts.get("QUEUED", 0) + counts.get("RUNNING", 0) + counts.get("CREATED", 0)
    rate = f"{100 * failed / (done + failed):.1f} %" if done + failed else "-"
    return [
        lag,
        f"Today (since 00:00 {snapshot.zone}): {sum(counts.values())} jobs, {done} completed, {failed} failed, "
        f"{counts.get('CANCELLED', 0)} cancelled, {waiting} waiting or running; failure rate {rate}",
    ]


def render(snapshot: Snapshot) -> str:
    """The screen: services and roles, workers, the queue by tier, lag, today's jobs."""
    lines = [f"Tessera status at {snapshot.at:%Y-%m-%d %H:%M:%S %Z}"]
    for part in (_services, _workers, _queue, _lag_and_today):
        lines += part(snapshot)
    return "\n".join(lines) + "\n"
