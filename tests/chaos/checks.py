"""The invariants, read from the event log, the read models, the notify stream and the API.

lost                every job that got a 202 has events (its JobSubmitted at least)
stuck               every job in the log, acknowledged or not, reaches a terminal event
double-terminal     no job has more than one terminal event, nor any event after it
wrongly-failed      no job fails: the load holds no bad input, and each fault happens once
cancelled-delivered a cancel the API took (202) is never followed by a completion, an event,
                    a COMPLETED notification or a COMPLETED answer from the API
charge-mismatches   each completion's cost is its model's price; per user and quota day, the
                    read model and the API charge the sum of the completions, and hold no
                    reservation once everything is over; the API reports each job's event cost
drift               the read models equal a rebuild from the log; the API's answer equals the log
unnotified          every terminal job has exactly one notification, with its terminal status
unrecovered         every component restarted after its kill serves again within 60 s
"""

from __future__ import annotations

import asyncio
import re
import sys
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import msgspec
import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from base import catalog
from base.db import init_connection
from projector.folds import READ_MODEL_TABLES
from scheduler.outbox import UNNOTIFIED_FRONTENDS
from streams import subjects as s
from tests.chaos.cluster import REPO
from tests.chaos.faults import FaultRecord
from tests.chaos.load import Job, User

CATALOG = catalog.Catalog.load()  # the platform under test runs the built-in catalog

TERMINAL = {"JobCompleted.v1": "COMPLETED", "JobFailed.v1": "FAILED", "JobCancelled.v1": "CANCELLED"}
VIOLATIONS = (
    "lost",
    "stuck",
    "double-terminal",
    "wrongly-failed",
    "cancelled-delivered",
    "charge-mismatches",
    "drift",
    "unnotified",
    "unrecovered",
)


@dataclass
class Stored:
    version: int
    type: str
    data: dict[str, Any]
    recorded_at: datetime


@dataclass
class Findings:
    """What the checks found: job ids (or other keys) per violated invariant, and why."""

    violations: dict[str, dict[str, str]] = field(default_factory=lambda: {v: {} for v in VIOLATIONS})
    notes: dict[str, dict[str, str]] = field(default_factory=dict)  # worth a look, not a violation
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, invariant: str, key: object, why: str) -> None:
        self.violations[invariant].setdefault(str(key), why)

    def note(self, kind: str, key: object, why: str) -> None:
        self.notes.setdefault(kind, {}).setdefault(str(key), why)


async def load_log(conn: asyncpg.Connection) -> dict[uuid.UUID, list[Stored]]:
    rows = await conn.fetch(
        "SELECT stream_id, version, type, data::text AS data, recorded_at FROM events"
        " WHERE stream_type = 'job' ORDER BY stream_id, version"
    )
    log: dict[uuid.UUID, list[Stored]] = defaultdict(list)
    for r in rows:
        log[r["stream_id"]].append(Stored(r["version"], r["type"], msgspec.json.decode(r["data"]), r["recorded_at"]))
    return log


async def settle(database_url: str, accepted: list[uuid.UUID], timeout_s: float) -> float:
    """Wait until every job in the log has ended (or the timeout) and the projector has caught up;
    returns how long that took."""
    started = asyncio.get_running_loop().time()
    deadline = started + timeout_s
    while True:
        try:
            conn = await asyncpg.connect(database_url)
        except (OSError, asyncpg.PostgresError):
            await asyncio.sleep(0.5)
            continue
        try:
            open_jobs = await conn.fetchval(
                "SELECT count(*) FROM (SELECT stream_id FROM events WHERE stream_type = 'job' GROUP BY stream_id"
                " HAVING count(*) FILTER (WHERE type = ANY($1::text[])) = 0) AS t",
                list(TERMINAL),
            )
            known = await conn.fetchval(
                "SELECT count(DISTINCT stream_id) FROM events WHERE stream_id = ANY($1)", accepted
            )
            behind = await conn.fetchval(
                "SELECT (SELECT coalesce(max(seq), 0) FROM events)"
                " - (SELECT seq FROM projection_position WHERE name = 'read_models')"
            )
        finally:
            await conn.close()
        now = asyncio.get_running_loop().time()
        if (open_jobs == 0 and known == len(accepted) and behind == 0) or now > deadline:
            return now - started
        await asyncio.sleep(0.5)


async def caught_up(database_url: str, timeout_s: float) -> bool:
    """Wait until the projector has folded the whole log."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    conn = await asyncpg.connect(database_url)
    try:
        while True:
            behind = await conn.fetchval(
                "SELECT (SELECT coalesce(max(seq), 0) FROM events)"
                " - (SELECT seq FROM projection_position WHERE name = 'read_models')"
            )
            if behind == 0:
                return True
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


def check_log(jobs: list[Job], log: dict[uuid.UUID, list[Stored]], found: Findings) -> None:
    by_id = {j.job_id: j for j in jobs}
    for job in jobs:
        if job.accepted_at is not None and not log.get(job.job_id):
            found.add("lost", job.job_id, "accepted (202) but the log has no event of it")
    for job_id, events in log.items():
        types = [e.type for e in events]
        terminals = [e for e in events if e.type in TERMINAL]
        found.counts[TERMINAL[terminals[0].type] if terminals else "open"] += 1
        found.counts["requeues"] += types.count("JobRequeued.v1")
        found.counts["dispatches"] += types.count("JobDispatched.v1")
        if job_id not in by_id or by_id[job_id].accepted_at is None:
            found.counts["in the log without a 202"] += 1
        if types[0] != "JobSubmitted.v1":
            found.add("lost", job_id, f"its first event is {types[0]}")
        if not terminals:
            found.add("stuck", job_id, f"no terminal event; last is {types[-1]}")
        elif len(terminals) > 1:
            found.add("double-terminal", job_id, " and ".join(e.type for e in terminals))
        elif events[-1] is not terminals[0]:
            found.add("double-terminal", job_id, f"{types[-1]} after {terminals[0].type}")
        if terminals and terminals[0].type == "JobFailed.v1":
            data = terminals[0].data
            found.add("wrongly-failed", job_id, f"{data.get('code')}: {data.get('message')}")
        client = by_id.get(job_id)
        if "JobCancelled.v1" in types and "JobCompleted.v1" in types:
            found.add("cancelled-delivered", job_id, "the log holds both JobCancelled and JobCompleted")
        elif client and client.cancel_status == 202 and "JobCompleted.v1" in types:
            found.add(
                "cancelled-delivered",
                job_id,
                f"the cancel was taken (202, {client.cancel_answer}) and the job completed",
            )


def check_requeues(
    log: dict[uuid.UUID, list[Stored]],
    faults: list[FaultRecord],
    origin_wall: float,
    worker_timeout_s: float,
    found: Findings,
) -> None:
    """Re-queues of attempts on a worker that was not killed around then: a live worker declared lost."""
    for job_id, events in log.items():
        for e in events:
            if e.type != "JobRequeued.v1":
                continue
            at = e.recorded_at.timestamp() - origin_wall
            worker = e.data.get("worker_id")
            found.counts[f"requeue: {re.sub(r'[0-9.]+', 'N', str(e.data.get('reason')))}"] += 1
            if not any(
                f.worker_id == worker and f.killed_at - 1 <= at <= f.restarted_at + worker_timeout_s + 5 for f in faults
            ):
                found.note(
                    "requeued from a live worker",
                    job_id,
                    f"{worker} was not killed near +{at:.1f}s: {e.data.get('reason')}",
                )


def check_prices(jobs: list[Job], log: dict[uuid.UUID, list[Stored]], found: Findings) -> dict[tuple[str, str], float]:
    """Each completion's cost against the catalog; returns the charge per (user id, quota day)."""
    charged: dict[tuple[str, str], float] = defaultdict(float)
    for job_id, events in log.items():
        submitted = events[0].data if events[0].type == "JobSubmitted.v1" else None
        for e in events:
            if e.type != "JobCompleted.v1" or submitted is None:
                continue
            model = CATALOG[submitted["model"]]
            price = model.actual_cost(submitted["params"], e.data.get("usage") or {})
            cost = float(e.data["cost_tokens"])
            if abs(cost - price) > 1e-9:
                found.add("charge-mismatches", job_id, f"charged {cost}, the price is {price}")
            charged[(submitted["user_id"], str(e.data.get("quota_day")))] += cost
    found.counts["tokens charged"] = round(sum(charged.values()), 2)
    return charged


async def check_usage(conn: asyncpg.Connection, charged: dict[tuple[str, str], float], found: Findings) -> None:
    rows = await conn.fetch("SELECT user_id::text AS user_id, date::text AS day, tokens_used FROM usage_daily")
    used = {(r["user_id"], r["day"]): float(r["tokens_used"]) for r in rows}
    for key in set(used) | {k for k, v in charged.items() if v}:
        if abs(used.get(key, 0.0) - round(charged.get(key, 0.0), 2)) > 0.005:
            found.add(
                "charge-mismatches",
                f"user {key[0]} on {key[1]}",
                f"usage_daily says {used.get(key, 0.0)}, the completions sum to {charged.get(key, 0.0):.2f}",
            )


async def check_api(
    api_url: str,
    users: list[User],
    jobs: list[Job],
    log: dict[uuid.UUID, list[Stored]],
    charged: dict[tuple[str, str], float],
    found: Findings,
    connections: int = 16,
) -> None:
    """Every accepted job as the API shows it, and each user's quota for today."""
    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(base_url=api_url, timeout=30, limits=limits) as client:
        gate = asyncio.Semaphore(connections)

        async def one(job: Job) -> None:
            events = log.get(job.job_id)
            if not events:
                return
            async with gate:
                r = await client.get(f"/api/v1/jobs/{job.job_id}", headers={"Authorization": f"Bearer {job.user.key}"})
            view = r.json()
            terminals = [e for e in events if e.type in TERMINAL]
            status = TERMINAL[terminals[0].type] if terminals else None
            if r.status_code != 200 or (status is not None and view.get("status") != status):
                found.add("drift", job.job_id, f"the API says {r.status_code} {view.get('status')}, the log {status}")
                if job.cancel_status == 202 and view.get("status") == "COMPLETED":
                    found.add("cancelled-delivered", job.job_id, "the API answers COMPLETED after a taken cancel")
            cost = float(terminals[0].data["cost_tokens"]) if status == "COMPLETED" else None
            if cost is not None and abs(float(view.get("cost_tokens", -1)) - cost) > 1e-9:
                found.add(
                    "charge-mismatches", job.job_id, f"the API reports cost {view.get('cost_tokens')}, the event {cost}"
                )
            if status == "CANCELLED" and view.get("artifacts"):
                found.add("cancelled-delivered", job.job_id, "the API shows artifacts of a cancelled job")

        await asyncio.gather(*(one(job) for job in jobs if job.accepted_at is not None))
        today = datetime.now(UTC).date().isoformat()
        for user in users:
            me = (await client.get("/api/v1/user/me", headers={"Authorization": f"Bearer {user.key}"})).json()["today"]
            expected = round(charged.get((str(user.user_id), today), 0.0), 2)
            if abs(float(me["tokens_used"]) - expected) > 0.005 or float(me["tokens_reserved"]) != 0:
                found.add(
                    "charge-mismatches",
                    f"user {user.user_id} today (API)",
                    f"used {me['tokens_used']} reserved {me['tokens_reserved']}; completions sum to {expected}",
                )


async def check_notifications(
    nats_url: str, log: dict[uuid.UUID, list[Stored]], found: Findings, jobs: list[Job]
) -> None:
    """The notify stream, read whole: one notification per terminal job, with the log's status."""
    nc = await nats.connect(nats_url)
    notes: dict[uuid.UUID, list[str]] = defaultdict(list)
    try:
        js = nc.jetstream()
        total = (await js.stream_info(s.NOTIFY_STREAM)).state.messages
        sub = await js.pull_subscribe(
            s.NOTIFY_ALL,
            stream=s.NOTIFY_STREAM,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE),
        )
        seen = 0
        while seen < total:
            try:
                msgs = await sub.fetch(min(500, total - seen), timeout=5)
            except TimeoutError:
                break
            for msg in msgs:
                seen += 1
                note = msgspec.json.decode(msg.data)
                notes[uuid.UUID(note["job_id"])].append(note["status"])
        await sub.unsubscribe()
    finally:
        await nc.close()
    if seen < total:
        found.note("notify stream unread", "reader", f"read {seen} of its {total} messages; notifications not checked")
        return
    cancelled_by_user = {j.job_id for j in jobs if j.cancel_status == 202}
    for job_id, events in log.items():
        terminals = [TERMINAL[e.type] for e in events if e.type in TERMINAL]
        got = notes.get(job_id, [])
        submitted = next((e.data for e in events if e.type == "JobSubmitted.v1"), {})
        if submitted.get("frontend") in UNNOTIFIED_FRONTENDS:  # followed by SSE and webhooks, not notified
            if got:
                found.add("unnotified", job_id, f"notified {got} for a job of frontend {submitted.get('frontend')}")
            continue
        if "COMPLETED" in got and ("CANCELLED" in terminals or job_id in cancelled_by_user):
            found.add("cancelled-delivered", job_id, f"notified {got} for a cancelled job")
        if terminals and got != terminals[:1]:
            found.add("unnotified", job_id, f"notified {got or 'nothing'}; the log ends {terminals[0]}")


async def snapshot(conn: asyncpg.Connection) -> dict[str, Counter[str]]:
    out = {}
    for table in READ_MODEL_TABLES:
        out[table] = Counter(repr(tuple(r.values())) for r in await conn.fetch(f"SELECT * FROM {table}"))
    return out


async def check_drift(database_url: str, env: dict[str, str], found: Findings) -> None:
    """The live read models against a rebuild from the log by `tessera projections rebuild`, run as
    a process of its own so that it folds with the code on disk, as the services did."""
    conn = await asyncpg.connect(database_url)
    await init_connection(conn)
    try:
        live = await snapshot(conn)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tessera.cli",
            "projections",
            "rebuild",
            env=env,
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await proc.communicate()
        if proc.returncode != 0:
            found.add("drift", "rebuild", f"`tessera projections rebuild` failed: {output.decode()[-500:]}")
            return
        rebuilt = await snapshot(conn)
    finally:
        await conn.close()
    for table in READ_MODEL_TABLES:
        extra, missing = live[table] - rebuilt[table], rebuilt[table] - live[table]
        for row in list(extra)[:20]:
            found.add("drift", f"{table} live {row}", "only in the live read model")
        for row in list(missing)[:20]:
            found.add("drift", f"{table} rebuilt {row}", "only in the rebuild")
        found.counts["drifted rows"] += sum(extra.values()) + sum(missing.values())


def history(events: list[Stored], job: Job | None) -> list[str]:
    """A job's events as lines: type, worker, attempt, reason or code, cost."""
    if not events:
        return ["(no events)"]
    start = events[0].recorded_at
    lines = []
    for e in events:
        keep = {
            k: e.data[k]
            for k in ("worker_id", "attempt", "reason", "code", "message", "cost_tokens", "requested_by")
            if e.data.get(k) is not None
        }
        lines.append(
            f"v{e.version:<2} +{(e.recorded_at - start).total_seconds():7.3f}s {e.type:<17} "
            + " ".join(f"{k}={v}" for k, v in keep.items())
        )
    if job is not None:
        lines.append(
            f"client: {job.kind} {job.body['params']}, {job.submit_attempts} submit attempt(s), "
            f"cancel after {job.cancel_after_s}s -> {job.cancel_status} {job.cancel_answer}"
            if job.cancel_after_s is not None
            else f"client: {job.kind} {job.body['params']}, {job.submit_attempts} submit attempt(s)"
        )
    return lines
