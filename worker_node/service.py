"""The worker process: announce, heartbeat, consume own dispatches, run, report, drain."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, ObjectMeta
from nats.js.errors import BucketNotFoundError, NotFoundError

from base.health import Readiness
from events.types import Artifact
from streams import connection
from streams import subjects as s
from streams.messages import (
    CancelRunning,
    Dispatch,
    EnginePool,
    Progress,
    ReportCompleted,
    ReportFailed,
    ReportStarted,
    WorkerStatus,
    encode,
)
from worker_node import gpu
from worker_node.engines import Engine, EngineError, JobContext, JobInput, Output
from worker_node.engines.base import Probed, Swapping

log = logging.getLogger(__name__)

INLINE_TEXT_LIMIT = 64 * 1024  # text up to this size travels inside the completion event
PROBE_TIMEOUT_S = 5.0
# Failures that say the engine's server could not be reached or went away: the engine is probed
# at once, so its models are withdrawn before the scheduler requeues the job elsewhere.
UNREACHABLE = frozenset({"ENGINE_UNAVAILABLE", "ENGINE_DISCONNECTED"})
STORE_PATIENCE_S = 120.0  # how long a finished job's artifacts wait for the object store


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
        self.artifact_ttl_s = artifact_ttl_s
        self.started_grace_s = started_grace_s
        self.gpu_index = gpu_index
        self.max_resolution = max_resolution  # None: from the GPU's memory, if it has one
        self.gpu_state: dict[str, Any] | None = None
        self.running: dict[uuid.UUID, tuple[int, asyncio.Task[None]]] = {}
        self._reported_seq = 0  # the command stream's sequence of the newest report stored
        self._down: set[Engine] = set()  # engines whose probe failed: their models are not offered
        self._seen: collections.OrderedDict[tuple[uuid.UUID, int], None] = collections.OrderedDict()
        self._draining = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._kv: Any = None
        self.ready = asyncio.Event()

    def status(self) -> WorkerStatus:
        """What the worker offers now: the engines whose probe last succeeded, and what it holds."""
        served = {model: engine for model, engine in self.engines.items() if engine not in self._down}
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
            reported_seq=self._reported_seq,
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
        kv = await self._workers_bucket()
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
        self._kv = kv
        self.gpu_state = await gpu.probe_async(self.gpu_index)
        await self._probe_engines()  # an engine that is down at start is not offered
        await kv.put(self.worker_id, encode(self.status()))
        heartbeat = asyncio.create_task(self._heartbeat(kv), name=f"worker-{self.worker_id}-heartbeat")
        prober = asyncio.create_task(self._watch_engines(), name=f"worker-{self.worker_id}-probes")
        self.ready.set()
        log.info("worker %s ready: models %s, %d slot(s)", self.worker_id, sorted(self.engines), self.slots)
        try:
            await self._consume(sub)
            if self.running:
                log.info("worker %s draining %d running job(s)", self.worker_id, len(self.running))
                await asyncio.gather(*(task for _, task in self.running.values()), return_exceptions=True)
        finally:
            heartbeat.cancel()
            prober.cancel()
            await asyncio.gather(heartbeat, prober, return_exceptions=True)
            with contextlib.suppress(nats.errors.Error):
                await kv.delete(self.worker_id)  # goodbye
            await control.unsubscribe()
            for engine in set(self.engines.values()):
                await engine.close()

    async def _workers_bucket(self):  # type: ignore[no-untyped-def]
        """The bucket the worker announces itself in. A worker does not create streams (its NATS
        user may not): it waits for the scheduler or `tessera migrate` to have made them."""
        assert self._js is not None
        while True:
            try:
                return await self._js.key_value(s.WORKERS_BUCKET)
            except BucketNotFoundError:
                log.warning(
                    "worker %s: no %s bucket yet (the scheduler or `tessera migrate` creates it); waiting",
                    self.worker_id,
                    s.WORKERS_BUCKET,
                )
                await asyncio.sleep(1.0)

    async def _heartbeat(self, kv) -> None:  # type: ignore[no-untyped-def]
        has_gpu = self.gpu_state is not None
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            if has_gpu:
                self.gpu_state = await gpu.probe_async(self.gpu_index) or self.gpu_state
            try:
                await kv.put(self.worker_id, encode(self.status()))
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("worker %s: heartbeat failed: %s", self.worker_id, exc)

    async def _probe_engines(self) -> bool:
        """Ask every engine that can be probed whether its server answers; True when that changed
        what the worker offers."""
        probed = [e for e in dict.fromkeys(self.engines.values()) if isinstance(e, Probed)]
        if not probed:
            return False
        results = await asyncio.gather(*(self._probe(e) for e in probed))
        changed = False
        for engine, up in zip(probed, results, strict=True):
            if up and engine in self._down:
                log.info("worker %s: engine %s answers again; offering its models", self.worker_id, engine.name)
                self._down.discard(engine)
                changed = True
            elif not up and engine not in self._down:
                log.warning(
                    "worker %s: engine %s does not answer; withdrawing its models %s",
                    self.worker_id,
                    engine.name,
                    sorted(engine.models),
                )
                self._down.add(engine)
                changed = True
        return changed

    @staticmethod
    async def _probe(engine: Probed) -> bool:
        try:
            return await asyncio.wait_for(engine.probe(), PROBE_TIMEOUT_S)
        except Exception:  # a probe that cannot answer is a failed probe
            return False

    async def _watch_engines(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            if await self._probe_engines():
                await self._announce()

    async def _announce(self) -> None:
        """Put the worker's status now, out of the heartbeat's rhythm (an engine came or went)."""
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self._kv.put(self.worker_id, encode(self.status()))

    async def _consume(self, sub) -> None:  # type: ignore[no-untyped-def]
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

    async def _command(self, subject: str, payload: object, msg_id: str) -> None:
        assert self._js is not None
        delay = 0.1
        while True:
            try:
                ack = await self._js.publish(subject, encode(payload), headers={s.HDR_MSG_ID: msg_id})
                # Before the job leaves `running`: a heartbeat that no longer holds it says where its report is.
                self._reported_seq = max(self._reported_seq, ack.seq)
                return
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("worker %s: report on %s not accepted (%s); retrying", self.worker_id, subject, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _run_job(self, dispatch: Dispatch) -> None:
        job = JobInput(
            job_id=dispatch.job_id,
            attempt=dispatch.attempt,
            capability=dispatch.capability,
            model=dispatch.model,
            params=dispatch.params,
        )
        tag = f"{job.job_id}:{job.attempt}"
        started_at = datetime.now(UTC)
        # "Started" is reported only for a job still running after a short grace: a job that ends
        # sooner reports its start inside its result, which saves a command and an event per job.
        reporters: list[asyncio.Task[None]] = []
        grace = asyncio.get_running_loop().call_later(
            self.started_grace_s, lambda: reporters.append(asyncio.create_task(self._report_started(job, tag)))
        )
        try:
            engine = self.engines.get(job.model)
            started = time.perf_counter()
            try:
                if engine is None:
                    raise EngineError("MODEL_NOT_SERVED", f"worker {self.worker_id} does not serve {job.model}")
                context = JobContext(progress=self._progress_fn(job), fetch=self._fetch_input)
                async with asyncio.timeout(dispatch.timeout_seconds):
                    outputs = await engine.run(job, context)
            except TimeoutError:
                await self._fail(job, "ENGINE_TIMEOUT", f"no result within {dispatch.timeout_seconds:.0f}s", started_at)
                return
            except EngineError as exc:
                if exc.code in UNREACHABLE and isinstance(engine, Probed):
                    if await self._probe_engines():
                        await self._announce()  # withdrawn before the scheduler reads the failure
                await self._fail(job, exc.code, exc.message, started_at)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("worker %s: engine failed on job %s", self.worker_id, job.job_id)
                await self._fail(job, "ENGINE_ERROR", f"{type(exc).__name__}: {exc}", started_at)
                return
            finally:
                grace.cancel()
                for reporter in reporters:
                    reporter.cancel()
            artifacts = await self._store_outputs(job, outputs, started_at)
            if artifacts is None:
                return
            await self._command(
                s.report(s.CMD_COMPLETED, self.worker_id),
                ReportCompleted(
                    job_id=job.job_id,
                    worker_id=self.worker_id,
                    attempt=job.attempt,
                    artifacts=artifacts,
                    execution_time_seconds=round(time.perf_counter() - started, 6),
                    usage=_usage(outputs),
                    started_at=started_at,
                ),
                f"{tag}:completed",
            )
        except asyncio.CancelledError:
            # Cancelled by the scheduler: tell it the slot is free again. Not a result.
            await asyncio.shield(self._fail(job, "CANCELLED", "interrupted on request"))
        finally:
            if self.running.get(job.job_id, (None,))[0] == job.attempt:  # not a newer attempt's entry
                del self.running[job.job_id]
            self._slot_freed.set()

    async def _report_started(self, job: JobInput, tag: str) -> None:
        report = ReportStarted(job_id=job.job_id, worker_id=self.worker_id, attempt=job.attempt)
        await self._command(s.report(s.CMD_STARTED, self.worker_id), report, f"{tag}:started")

    async def _fail(self, job: JobInput, code: str, message: str, started_at: datetime | None = None) -> None:
        report = ReportFailed(
            job_id=job.job_id,
            worker_id=self.worker_id,
            attempt=job.attempt,
            code=code,
            message=message,
            started_at=started_at,
        )
        await self._command(s.report(s.CMD_FAILED, self.worker_id), report, f"{job.job_id}:{job.attempt}:failed")

    def _progress_fn(self, job: JobInput):  # type: ignore[no-untyped-def]
        async def progress(fraction: float | None, message: str | None, partial_text: str | None) -> None:
            assert self._nc is not None
            await self._nc.publish(
                s.progress(str(job.job_id)),
                encode(
                    Progress(
                        job_id=job.job_id,
                        attempt=job.attempt,
                        fraction=fraction,
                        message=message,
                        partial_text=partial_text,
                    )
                ),
            )

        return progress

    async def _fetch_input(self, name: str) -> bytes:
        """An uploaded input, from the object store (the gateway checked it is the job owner's)."""
        assert self._js is not None
        if not name.startswith("uploads/"):
            raise EngineError("INPUT_UNAVAILABLE", f"{name!r} is not an upload")
        store = await self._js.object_store(s.ARTIFACTS_BUCKET)
        try:
            result = await store.get(name)
        except NotFoundError:
            raise EngineError("INPUT_EXPIRED", "the uploaded input is no longer stored") from None
        return result.data or b""

    async def _store_outputs(self, job: JobInput, outputs: list[Output], started_at: datetime) -> list[Artifact] | None:
        """Store the outputs as artifacts, waiting out a NATS outage (the engine's work is done and
        worth keeping) for up to STORE_PATIENCE_S; None when it failed, and the failure is reported."""
        artifacts = []
        for output in outputs:
            delay, deadline = 0.1, time.monotonic() + STORE_PATIENCE_S
            while True:
                try:
                    artifacts.append(await self._store(job, output))
                    break
                except (nats.errors.Error, TimeoutError) as exc:
                    if time.monotonic() >= deadline:
                        await self._fail(
                            job,
                            "ARTIFACT_STORE_UNAVAILABLE",
                            f"the object store took no artifact for {STORE_PATIENCE_S:.0f}s: {exc!r}",
                            started_at,
                        )
                        return None
                    log.warning(
                        "worker %s: storing an artifact of job %s failed (%r); retrying",
                        self.worker_id,
                        job.job_id,
                        exc,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                except Exception as exc:  # not NATS being away: this output cannot be stored
                    log.exception("worker %s: cannot store an artifact of job %s", self.worker_id, job.job_id)
                    await self._fail(job, "ARTIFACT_STORE_FAILED", f"{type(exc).__name__}: {exc}", started_at)
                    return None
        return artifacts

    async def _store(self, job: JobInput, output: Output) -> Artifact:
        artifact_id = uuid.uuid4()
        expires_at = datetime.now(UTC) + timedelta(seconds=self.artifact_ttl_s)
        if output.data is None:
            text = output.text or ""
            if len(text.encode()) <= INLINE_TEXT_LIMIT:
                return Artifact(
                    id=artifact_id,
                    kind=output.kind,
                    format=output.format,
                    content_type=output.content_type,
                    size_bytes=len(text.encode()),
                    text=text,
                    expires_at=expires_at,
                )
            data = text.encode()
        else:
            data = output.data
        assert self._js is not None
        name = f"jobs/{job.job_id}/{job.attempt}/{artifact_id}.{output.format}"
        store = await self._js.object_store(s.ARTIFACTS_BUCKET)
        await store.put(name, data, meta=ObjectMeta(name=name, description=output.content_type))
        return Artifact(
            id=artifact_id,
            kind=output.kind,
            format=output.format,
            content_type=output.content_type,
            size_bytes=len(data),
            object_name=name,
            width=output.width,
            height=output.height,
            duration_seconds=output.duration_seconds,
            expires_at=expires_at,
        )


def _usage(outputs: list[Output]) -> dict[str, float]:
    total: dict[str, float] = {}
    for output in outputs:
        for name, value in output.usage.items():
            total[name] = total.get(name, 0.0) + value
    return total
