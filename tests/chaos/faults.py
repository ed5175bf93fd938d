"""The kill plan: every component SIGKILLed once under load and started again 1-3 s later.

Some kills wait for a moment instead of falling at random, to hit the races that matter:
  * a worker killed the instant a dispatch to it is published, and started again before its
    heartbeat timeout, so its new instance is what makes the scheduler re-queue the lost attempts
    and dispatch them again: TTS runs on that worker alone, so to itself;
  * a worker killed while it runs a held job, and started again the moment the scheduler re-queues
    what it ran, while those jobs are being dispatched again;
  * nats-server killed right after a worker's heartbeat and started again 1-3 s later, so the
    outage falls between two heartbeats and outlasts one;
  * the leading scheduler killed as it announces a commit, before or while the outbox relays
    that batch's dispatches, events and notifications.
The moments are watched on core NATS by a tap that subscribes to the dispatch subjects, the
worker bucket's subjects, the re-queue events and the scheduler's commit notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
import nats
from nats.aio.msg import Msg

from streams import subjects as s
from tests.chaos.cluster import Cluster

log = logging.getLogger("tessera.chaos")

KV_SUBJECTS = f"$KV.{s.WORKERS_BUCKET}.>"
REQUEUED = f"{s.PREFIX}.events.job.*.JobRequeued_v1"


@dataclass
class _Waiter:
    subject_prefix: str
    match: Callable[[Msg], bool]
    action: Callable[[Msg], None]
    done: asyncio.Future[Msg]


class Tap:
    """Core-NATS subscriptions to the moments a fault waits for; the action runs inside the
    message callback, so a kill follows the message within a millisecond or so."""

    def __init__(self) -> None:
        self._nc: nats.NATS | None = None
        self._waiters: list[_Waiter] = []

    async def start(self, nats_url: str) -> Tap:
        self._nc = await nats.connect(nats_url, name="chaos-tap", max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        for subject in (s.DISPATCH_ALL, KV_SUBJECTS, REQUEUED, s.COMMITTED):
            await self._nc.subscribe(subject, cb=self._on_msg)
        return self

    async def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), 5)

    async def _on_msg(self, msg: Msg) -> None:
        for waiter in list(self._waiters):
            if msg.subject.startswith(waiter.subject_prefix) and not waiter.done.done() and waiter.match(msg):
                self._waiters.remove(waiter)
                waiter.action(msg)
                waiter.done.set_result(msg)

    async def when(
        self, subject_prefix: str, match: Callable[[Msg], bool], action: Callable[[Msg], None], timeout: float
    ) -> Msg | None:
        """Run `action` on the first message under `subject_prefix` that `match`es; None if none came."""
        waiter = _Waiter(subject_prefix, match, action, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter.done), timeout)
        except TimeoutError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            return None


@dataclass
class FaultRecord:
    name: str
    killed_at: float  # seconds since the run started
    restarted_at: float
    detail: str
    worker_id: str | None = None  # the worker killed, for a worker fault

    def line(self) -> str:
        return (
            f"{self.name:<28} killed at {self.killed_at:7.2f}s, restarted at {self.restarted_at:7.2f}s "
            f"(+{self.restarted_at - self.killed_at:.2f}s)  {self.detail}"
        )


@dataclass
class Faults:
    """Runs each fault once, in an order and at gaps drawn from `rng`."""

    cluster: Cluster
    tap: Tap
    rng: random.Random
    origin: float  # time.monotonic() at the start of the run
    gap_s: tuple[float, float] = (1.0, 4.0)
    restart_s: tuple[float, float] = (1.0, 3.0)
    records: list[FaultRecord] = field(default_factory=list)
    unrecovered: list[str] = field(default_factory=list)  # what did not come back after a fault

    def plan(self) -> list[tuple[str, Callable[[], Awaitable[FaultRecord]]]]:
        faults: list[tuple[str, Callable[[], Awaitable[FaultRecord]]]] = [
            ("worker right after dispatch", self.worker_after_dispatch),
            ("worker mid-job", self.worker_mid_job),
            ("nats between heartbeats", self.nats_between_heartbeats),
            ("postgres postmaster", self.postgres),
            ("active scheduler", self.scheduler_leader),
            ("projector", lambda: self.service("projector")),
            ("gateway", lambda: self.service("gateway")),
        ]
        self.rng.shuffle(faults)
        return faults

    async def run(self) -> None:
        for name, fault in self.plan():
            await asyncio.sleep(self.rng.uniform(*self.gap_s))
            log.info("chaos: %s", name)
            record = await fault()
            self.records.append(record)
            log.info("chaos: %s", record.line())
            await self.recovered(record.name)

    def now(self) -> float:
        return time.monotonic() - self.origin

    def pause(self) -> float:
        return self.rng.uniform(*self.restart_s)

    async def recovered(self, after: str, timeout_s: float = 60.0) -> None:
        """The gateway answers and a scheduler leads: ready for the next fault. A gateway that does
        not answer in time is recorded, made to dump its threads' stacks into its log (SIGABRT to
        faulthandler) and started once more; a run without a leader cannot go on."""
        try:
            await self.cluster.wait_ready(timeout_s)
        except RuntimeError:
            gateway = self.cluster.services["gateway"]
            self.unrecovered.append(
                f"the gateway (start #{gateway.starts}) did not answer /readyz within "
                f"{timeout_s:.0f}s after the {after} fault; its output: "
                f"{gateway.output()[-600:]!r}; stacks in {gateway.log_path}"
            )
            gateway.abort()
            self.cluster.start("gateway")
            await self.cluster.wait_ready(timeout_s)
        try:
            await self.cluster.wait_leader(timeout_s)
        except RuntimeError:
            self.unrecovered.append(f"no scheduler led within {timeout_s:.0f}s after the {after} fault")
            raise

    # --- the faults ------------------------------------------------------------------------------

    async def service(self, name: str) -> FaultRecord:
        svc = self.cluster.services[name]
        svc.kill()
        killed = self.now()
        await asyncio.sleep(self.pause())
        self.cluster.start(name)
        return FaultRecord(name, killed, self.now(), "random moment")

    async def scheduler_leader(self) -> FaultRecord:
        """Killed as its commit notice goes out: the batch is in PostgreSQL, its dispatches,
        events and replies may not be on NATS yet, and the standby must relay them."""
        leader = await self.cluster.wait_leader()
        seen = await self.tap.when(s.COMMITTED, lambda _m: True, lambda _m: leader.kill(), timeout=30)
        if seen is None:
            leader.kill()
        killed = self.now()
        await asyncio.sleep(self.pause())
        self.cluster.start(leader.name)
        detail = (
            f"killed at its commit notice (seq {seen.data.decode()})"
            if seen
            else "no commit within 30s: killed at random"
        )
        return FaultRecord(f"{leader.name} (leader)", killed, self.now(), detail + "; the standby takes over")

    async def postgres(self) -> FaultRecord:
        await asyncio.to_thread(self.cluster.kill_postgres)
        killed = self.now()
        await asyncio.sleep(self.pause())
        await asyncio.to_thread(self.cluster.restart_postgres)
        return FaultRecord("postgres postmaster", killed, self.now(), "random moment; SIGKILL to the postmaster only")

    def _worker_of(self, msg: Msg) -> str:
        return msg.subject.rsplit(".", 1)[-1]

    def _kill_addressee(self, msg: Msg) -> None:
        self.cluster.services[f"worker-{self._worker_of(msg)}"].kill()

    async def _any_dispatch(self, match: Callable[[Msg], bool], kill: bool) -> Msg | None:
        """The next dispatch that `match`es, its worker killed in the same callback if `kill`."""
        return await self.tap.when(
            f"{s.PREFIX}.dispatch.", match, self._kill_addressee if kill else lambda _m: None, timeout=30
        )

    async def worker_after_dispatch(self) -> FaultRecord:
        """Killed the instant a TTS dispatch to it is published; started again before its heartbeat
        timeout, so its new instance is what makes the scheduler re-queue its jobs, and as the only
        TTS worker, it is where the re-queued TTS job is dispatched again."""
        seen = await self._any_dispatch(lambda m: _payload(m).get("capability") == "tts", kill=True)
        worker_id = self._worker_of(seen) if seen else self.rng.choice(self.cluster.worker_ids)
        svc = self.cluster.services[f"worker-{worker_id}"]
        if seen is None:
            svc.kill()
        killed = self.now()
        await asyncio.sleep(self.pause())
        self.cluster.start(svc.name)
        detail = (
            f"killed at the dispatch of {_job_id(seen)}" if seen else "no dispatch came within 30s: killed at random"
        )
        return FaultRecord(f"worker {worker_id} after dispatch", killed, self.now(), detail, worker_id)

    async def worker_mid_job(self, running_s: float = 0.3) -> FaultRecord:
        """Killed `running_s` after a held job (delay >= 1 s) was dispatched to it; started again at
        the first re-queue of one of its jobs, while the scheduler dispatches them again."""
        seen = await self._any_dispatch(_held_job, kill=False)
        worker_id = self._worker_of(seen) if seen else self.rng.choice(self.cluster.worker_ids)
        svc = self.cluster.services[f"worker-{worker_id}"]
        await asyncio.sleep(running_s)
        svc.kill()
        killed = self.now()
        timeout = self.cluster.timing.worker_timeout_s + 15
        requeue = await self.tap.when(
            REQUEUED.split("*")[0],
            lambda m: _worker(m) == worker_id,
            lambda _m: self.cluster.start(svc.name),
            timeout=timeout,
        )
        if requeue is None:
            self.cluster.start(svc.name)
        detail = f"{running_s}s into job {_job_id(seen)}; " if seen else "no held job came: killed at random; "
        detail += (
            "restarted at the re-queue of " + str(_job_id(requeue, "stream_id"))
            if requeue
            else f"no re-queue within {timeout:.0f}s"
        )
        return FaultRecord(f"worker {worker_id} mid-job", killed, self.now(), detail, worker_id)

    async def nats_between_heartbeats(self, worker_id: str = "w1") -> FaultRecord:
        seen = await self.tap.when(
            f"$KV.{s.WORKERS_BUCKET}.{worker_id}", lambda _m: True, lambda _m: self.cluster.kill_nats(), timeout=30
        )
        if seen is None:
            self.cluster.kill_nats()
        killed = self.now()
        await asyncio.sleep(self.pause())
        await asyncio.to_thread(self.cluster.restart_nats)
        detail = (
            f"killed right after a heartbeat of {worker_id} (every {self.cluster.timing.heartbeat_interval_s}s)"
            if seen
            else "no heartbeat seen: killed at random"
        )
        return FaultRecord("nats-server", killed, self.now(), detail)


def _payload(msg: Msg) -> dict[str, object]:
    try:
        value = msgspec.json.decode(msg.data)
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _job_id(msg: Msg, key: str = "job_id") -> object:
    return _payload(msg).get(key)


def _held_job(msg: Msg) -> bool:
    params = _payload(msg).get("params")
    return isinstance(params, dict) and float(params.get("delay_seconds") or 0) >= 1.0


def _worker(msg: Msg) -> object:
    data = _payload(msg).get("data")
    return data.get("worker_id") if isinstance(data, dict) else None
