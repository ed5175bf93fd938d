"""The worker process: announce, heartbeat, consume own dispatches, run, report, drain.

Its presence in the workers bucket (heartbeats, engine probes) is `worker_node.presence`; running a
dispatched job (fetch, engine run, storing outputs, reports) is `worker_node.jobs`."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from base.health import Readiness
from base.logs import about_job
from streams import connection
from streams import subjects as s
from streams.messages import CancelRunning, Dispatch, EnginePool, WorkerStatus
from worker_node import gpu, metrics
from worker_node.engines import Engine
from worker_node.engines.base import Swapping
from worker_node.jobs import JobRunner
from worker_node.presence import Presence

log = logging.getLogger(__name__)


class Worker:
    def __init__(
        self,
        *,
        nats_url: str,
        worker_id: str,
        engines: list[Engine],
        slots: int = 0,
        heartbeat_interval_s: float = 2.0,
        artifact_ttl_s: float = 7 * 24 * 3600,
        started_grace_s: float = 0.2,
        gpu_index: int | None = None,
        max_resolution: int | None = None,
    ) -> None:
        if not s.is_token(worker_id):
            raise ValueError(f"worker id {worker_id!r} may hold only letters, digits, '_' and '-'")
        self.nats_url = nats_url
        self.worker_id = worker_id
        self.instance_id = uuid.uuid4()
        self.engines = {model: engine for engine in engines for model in engine.models}
        self.slots = slots or sum(e.slots for e in engines)  # each engine is also held to its own
        self.heartbeat_interval_s = heartbeat_interval_s
        self.max_resolution = max_resolution  # None: from the GPU's memory, if it has one
        self.running: dict[uuid.UUID, tuple[int, asyncio.Task[None]]] = {}
        self.presence = Presence(
            worker_id=worker_id,
            engines=list(dict.fromkeys(self.engines.values())),
            interval_s=heartbeat_interval_s,
            gpu_index=gpu_index,
            status=self.status,
        )
        self.jobs = JobRunner(
            worker_id=worker_id,
            engines=self.engines,
            presence=self.presence,
            artifact_ttl_s=artifact_ttl_s,
            started_grace_s=started_grace_s,
        )
        self._seen: collections.OrderedDict[tuple[uuid.UUID, int], None] = collections.OrderedDict()
        self._draining = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self.ready = asyncio.Event()
        metrics.watch(self)

    @property
    def gpu_state(self) -> dict[str, Any] | None:
        """What the GPU probe last said (None without a GPU); refreshed every heartbeat."""
        return self.presence.gpu_state

    @gpu_state.setter
    def gpu_state(self, value: dict[str, Any] | None) -> None:
        self.presence.gpu_state = value

    def status(self) -> WorkerStatus:
        """What the worker offers now: the engines whose probe last succeeded, and what it holds."""
        served = {model: engine for model, engine in self.engines.items() if engine not in self.presence.down}
        engines = list(dict.fromkeys(served.values()))
        capabilities = sorted({c for e in engines for c in e.capabilities})
        return WorkerStatus(
            worker_id=self.worker_id,
            instance_id=self.instance_id,
            capabilities=capabilities,
            engines=list(dict.fromkeys(e.name for e in engines)),
            models=sorted(served),
            loaded_models=self.loaded_models(engines),
            slots=self.slots,
            pools=[
                EnginePool(engine=e.name, models=sorted(m for m, owner in served.items() if owner is e), slots=e.slots)
                for e in engines
            ],
            running=list(self.running),
            held={job_id: attempt for job_id, (attempt, _) in self.running.items()},
            reported_seq=self.jobs.reported_seq,
            draining=self._draining.is_set(),
            sent_at=datetime.now(UTC),
            heartbeat_interval_s=self.heartbeat_interval_s,
            gpu=self.gpu_state,
            max_resolution=self.resolution_limit(capabilities),
        )

    def resolution_limit(self, capabilities: list[str]) -> int | None:
        """The largest image side this worker takes: set by the operator, else judged from its GPU."""
        if self.max_resolution is not None:
            return self.max_resolution
        if self.gpu_state and {"image", "video"} & set(capabilities):
            return gpu.max_resolution_for(int(self.gpu_state.get("memory_total_mib", 0)))
        return None

    def loaded_models(self, engines: list[Engine] | None = None) -> list[str]:
        """Models ready to run without a load: what an engine says it holds (`loaded`, e.g. the
        checkpoint ComfyUI used last), or all its models for engines that keep everything loaded."""
        loaded: set[str] = set()
        for engine in set(self.engines.values()) if engines is None else engines:
            loaded.update(engine.loaded if isinstance(engine, Swapping) else engine.models)
        return sorted(loaded)

    async def stop(self) -> None:
        """Drain: take no new job, finish the running ones, say goodbye."""
        self._draining.set()

    async def readiness(self) -> Readiness:
        """Ready once it has registered in the workers bucket, while it hears NATS and takes jobs."""
        nc = self._nc
        return Readiness(
            checks={
                "nats": nc is not None and nc.is_connected,
                "registered": self.ready.is_set(),
                "accepting": not self._draining.is_set(),
            },
            details={"worker_id": self.worker_id, "running": len(self.running), "slots": self.slots},
        )

    async def run(self) -> None:
        async with connection.opened(self.nats_url, f"worker-{self.worker_id}") as nc:
            self._nc = nc
            await self._serve(nc)

    async def _serve(self, nc: NATS) -> None:
        self._js = nc.jetstream()
        self.jobs.connect(nc, self._js)
        await self.presence.bucket(self._js)
        control = await nc.subscribe(s.control(self.worker_id), cb=self._on_control)
        sub = await self._js.pull_subscribe(
            s.dispatch(self.worker_id),
            durable=f"worker-{self.worker_id}",
            stream=s.DISPATCH_STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=30,
                description=f"Dispatches for worker {self.worker_id}",
            ),
        )
        await self.presence.start()  # probes the GPU and the engines, announces, keeps heartbeats going
        self.ready.set()
        log.info("worker %s ready: models %s, %d slot(s)", self.worker_id, sorted(self.engines), self.slots)
        try:
            await self._consume(sub)
            if self.running:
                log.info("worker %s draining %d running job(s)", self.worker_id, len(self.running))
                await asyncio.gather(*(task for _, task in self.running.values()), return_exceptions=True)
        finally:
            await self.presence.stop()  # goodbye
            await control.unsubscribe()
            for engine in set(self.engines.values()):
                await engine.close()

    async def _consume(self, sub: JetStreamContext.PullSubscription) -> None:
        decoder = msgspec.json.Decoder(Dispatch)
        while not self._draining.is_set():
            free = self.slots - len(self.running)
            if free <= 0:
                self._slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_freed.wait(), 0.5)
                continue
            try:
                msgs = await sub.fetch(free, timeout=0.5)
            except TimeoutError:
                continue
            except nats.errors.Error as exc:  # NATS is away; the dispatches wait in the stream
                log.warning("worker %s: cannot fetch dispatches (%r); retrying", self.worker_id, exc)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                await msg.ack()  # at most once here; the scheduler re-queues attempts that are lost
                try:
                    dispatch = decoder.decode(msg.data)
                except msgspec.DecodeError as exc:
                    log.error("worker %s: undecodable dispatch dropped: %s", self.worker_id, exc)
                    continue
                self._start(dispatch)

    def _start(self, dispatch: Dispatch) -> None:
        key = (dispatch.job_id, dispatch.attempt)
        if key in self._seen:  # a re-sent dispatch of an attempt this worker already took
            return
        if dispatch.instance_id is not None and dispatch.instance_id != self.instance_id:
            # Sent to this worker's previous life: the scheduler fenced that attempt when it saw
            # this instance, and sends the job again if it is still to run.
            log.info(
                "worker %s: dropping stale dispatch of job %s attempt %d",
                self.worker_id,
                dispatch.job_id,
                dispatch.attempt,
            )
            return
        held = self.running.get(dispatch.job_id)
        if held is not None and held[0] > dispatch.attempt:  # an older attempt, fenced already
            return
        self._seen[key] = None
        while len(self._seen) > 10_000:
            self._seen.popitem(last=False)
        if held is not None:  # the scheduler gave up on that attempt (it reached us late): stop it
            log.info(
                "worker %s: job %s attempt %d replaces attempt %d",
                self.worker_id,
                dispatch.job_id,
                dispatch.attempt,
                held[0],
            )
            held[1].cancel()
        task = asyncio.create_task(self._run_job(dispatch), name=f"job-{dispatch.job_id}")
        self.running[dispatch.job_id] = (dispatch.attempt, task)

    async def _on_control(self, msg: Msg) -> None:
        try:
            cancel = msgspec.json.decode(msg.data, type=CancelRunning)
        except msgspec.DecodeError:
            return
        entry = self.running.get(cancel.job_id)
        if entry and entry[0] == cancel.attempt:
            log.info("worker %s: cancelling job %s", self.worker_id, cancel.job_id)
            entry[1].cancel()

    async def _run_job(self, dispatch: Dispatch) -> None:
        about_job(dispatch.job_id)  # this task's log lines carry the job's id
        try:
            await self.jobs.run(dispatch)
        finally:
            if self.running.get(dispatch.job_id, (None,))[0] == dispatch.attempt:  # not a newer attempt's entry
                del self.running[dispatch.job_id]
            self._slot_freed.set()
