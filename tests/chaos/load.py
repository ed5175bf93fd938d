"""The clients: paced HTTP submits of echo and priced TTS jobs, a share of them cancelled.

Each job has its own Idempotency-Key, and a client retries a submit that failed (a 5xx or a broken
connection) with that key until it gets its 202, as the API asks clients to. The gateway derives the
job id from the user and the key, so a job whose 202 was lost on the way is still known by its id.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

RETRYABLE = {500, 502, 503, 504}


@dataclass
class User:
    user_id: uuid.UUID
    key: str


@dataclass
class Job:
    n: int
    user: User
    idempotency_key: str
    body: dict[str, Any]
    cancel_after_s: float | None  # cancel this long after its 202, if set
    accepted_at: float | None = None
    submit_attempts: int = 0
    refused: str | None = None  # a final answer other than 202 (4xx)
    cancel_status: int | None = None  # the cancel's final HTTP status (202: the platform took it)
    cancel_answer: str | None = None  # the status it answered with

    @property
    def job_id(self) -> uuid.UUID:
        """The id the gateway gives a job submitted with this Idempotency-Key."""
        return uuid.uuid5(self.user.user_id, f"idempotency:{self.idempotency_key}")

    @property
    def kind(self) -> str:
        return str(self.body["capability"])


def make_jobs(
    count: int,
    users: list[User],
    rng: random.Random,
    *,
    run_tag: str,
    tts_share: float = 0.08,
    cancel_share: float = 0.05,
) -> list[Job]:
    """The job mix: mostly echo (some held for a while, so kills and cancels find them running),
    some TTS with a price, a share of all cancelled soon after acceptance, some of those just as
    they finish."""
    jobs = []
    for n in range(count):
        if rng.random() < tts_share:
            words = " ".join(
                rng.choice(("tessera", "chaos", "speech", "token", "worker", "queue"))
                for _ in range(rng.randint(2, 30))
            )
            body: dict[str, Any] = {"capability": "tts", "params": {"prompt": f"{words} {n}", "model": "espeak-ng"}}
        else:
            roll = rng.random()
            delay = (
                0 if roll < 0.6 else round(rng.uniform(0.2, 1.0), 2) if roll < 0.9 else round(rng.uniform(2.0, 3.0), 2)
            )
            params: dict[str, Any] = {"prompt": f"chaos {n}"}
            if delay:
                params["delay_seconds"] = delay
            body = {"capability": "echo", "params": params}
        cancel = None
        if rng.random() < cancel_share:
            delay = body["params"].get("delay_seconds")
            # Half the cancels race the job's own end: sent when a held job is about to finish.
            cancel = round(
                max(0.0, delay + rng.uniform(-0.15, 0.05)) if delay and rng.random() < 0.5 else rng.uniform(0.0, 1.5), 3
            )
        jobs.append(
            Job(n=n, user=users[n % len(users)], idempotency_key=f"{run_tag}-{n}", body=body, cancel_after_s=cancel)
        )
    return jobs


@dataclass
class Attempt:
    sent: float
    answered: float
    why: str  # "202", or why it failed


@dataclass
class Load:
    """Submits `jobs` at `rate` per second, each retried until accepted or `give_up_s` has passed."""

    api_url: str
    jobs: list[Job]
    rate: float
    give_up_s: float = 180.0
    connections: int = 48
    attempts: list[Attempt] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)  # why submits failed, counted
    submitted: int = 0  # jobs whose first submit has been sent
    _client: httpx.AsyncClient | None = None

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=self.connections, max_keepalive_connections=self.connections)
        async with httpx.AsyncClient(
            base_url=self.api_url, timeout=httpx.Timeout(30.0, connect=5.0), limits=limits
        ) as client:
            self._client = client
            started = time.monotonic()
            tasks = []
            for i, job in enumerate(self.jobs):
                delay = started + i / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.submitted += 1
                tasks.append(asyncio.create_task(self._job(job), name=f"chaos-job-{job.n}"))
            await asyncio.gather(*tasks)
            self._client = None

    async def _job(self, job: Job) -> None:
        await self._submit(job)
        if job.accepted_at is not None and job.cancel_after_s is not None:
            await asyncio.sleep(job.cancel_after_s)
            await self._cancel(job)

    def _count(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    async def _submit(self, job: Job) -> None:
        assert self._client is not None
        headers = {"Authorization": f"Bearer {job.user.key}", "Idempotency-Key": job.idempotency_key}
        deadline = time.monotonic() + self.give_up_s
        backoff = 0.1
        while time.monotonic() < deadline:
            job.submit_attempts += 1
            sent = time.monotonic()
            try:
                r = await self._client.post("/api/v1/jobs", json=job.body, headers=headers)
            except httpx.TransportError as exc:
                self.attempts.append(Attempt(sent, time.monotonic(), type(exc).__name__))
                self._count(type(exc).__name__)
            else:
                code = _code(r)
                self.attempts.append(Attempt(sent, time.monotonic(), f"{r.status_code} {code}".strip()))
                if r.status_code == 202:
                    answered = uuid.UUID(r.json()["job_id"])
                    if answered != job.job_id:
                        job.refused = f"202 with job id {answered}, expected {job.job_id}"
                    job.accepted_at = time.monotonic()
                    return
                self._count(f"{r.status_code} {code}")
                if r.status_code not in RETRYABLE and r.status_code != 429:
                    job.refused = f"{r.status_code} {code}"
                    return
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, 1.0)

    async def _cancel(self, job: Job) -> None:
        assert self._client is not None
        headers = {"Authorization": f"Bearer {job.user.key}"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                r = await self._client.delete(f"/api/v1/jobs/{job.job_id}", headers=headers)
            except httpx.TransportError:
                await asyncio.sleep(0.3)
                continue
            if r.status_code in RETRYABLE:
                await asyncio.sleep(0.3)
                continue
            job.cancel_status = r.status_code
            body = r.json()
            # 202 answers {"status": "CANCELLED"}; a refusal is a problem document with a code
            refusal = body.get("job_status") or body.get("code")
            job.cancel_answer = body.get("status") if r.status_code == 202 else refusal
            return

    def longest_outage(self, origin: float) -> tuple[float, float, str]:
        """The longest time between two accepted submits (by answer time) in which some submits
        failed. Returns its length, its start (seconds after `origin`) and the failures answered
        in it, counted by cause."""
        ordered = sorted(self.attempts, key=lambda a: a.answered)
        longest: tuple[float, float, list[Attempt]] = (0.0, 0.0, [])
        last_ok = ordered[0].sent if ordered else origin
        failed: list[Attempt] = []
        for attempt in [*ordered, None]:
            if attempt is not None and attempt.why != "202":
                failed.append(attempt)
                continue
            end = attempt.answered if attempt is not None else ordered[-1].answered
            if failed and end - last_ok > longest[0]:
                longest = (end - last_ok, last_ok - origin, failed)
            failed = []
            last_ok = end
        causes = Counter(a.why for a in longest[2])
        return longest[0], longest[1], ", ".join(f"{why} x{n}" for why, n in causes.most_common())


def _code(r: httpx.Response) -> str:
    try:
        return str(r.json().get("code", ""))
    except ValueError:
        return ""
