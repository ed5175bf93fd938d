"""Running one dispatched job: its engine's run, its inputs fetched from and its outputs stored in
the object store, its progress published, and its reports (started, completed, failed) sent to the
scheduler as commands."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta

import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta
from nats.js.errors import NotFoundError

from events.types import Artifact
from streams import subjects as s
from streams.messages import Dispatch, Progress, ReportCompleted, ReportFailed, ReportStarted, encode
from worker_node import metrics
from worker_node.engines import Engine, EngineError, JobContext, JobInput, Output
from worker_node.engines.base import Probed, ProgressFn
from worker_node.presence import Presence

log = logging.getLogger(__name__)

INLINE_TEXT_LIMIT = 64 * 1024  # text up to this size travels inside the completion event
# Failures that say the engine's server could not be reached or went away: the engine is probed
# at once, so its models are withdrawn before the scheduler requeues the job elsewhere.
UNREACHABLE = frozenset({"ENGINE_UNAVAILABLE", "ENGINE_DISCONNECTED"})
STORE_PATIENCE_S = 120.0  # how long a finished job's artifacts wait for the object store


class JobRunner:
    """Runs the worker's dispatched jobs and reports on them; remembers the command stream's
    sequence of the newest report stored, which the worker's status carries."""

    def __init__(
        self,
        *,
        worker_id: str,
        engines: dict[str, Engine],
        presence: Presence,
        artifact_ttl_s: float,
        started_grace_s: float,
    ) -> None:
        self.worker_id = worker_id
        self.engines = engines  # by model
        self.presence = presence
        self.artifact_ttl_s = artifact_ttl_s
        self.started_grace_s = started_grace_s
        self.reported_seq = 0  # the command stream's sequence of the newest report stored
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None

    def connect(self, nc: NATS, js: JetStreamContext) -> None:
        self._nc = nc
        self._js = js

    async def run(self, dispatch: Dispatch) -> None:
        """Run the job and report its end; a cancelled job reports that its slot is free again."""
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
                context = JobContext(progress=self._progress_fn(job, dispatch), fetch=self._fetch_input)
                async with asyncio.timeout(dispatch.timeout_seconds):
                    outputs = await engine.run(job, context)
            except TimeoutError:
                await self._fail(job, "ENGINE_TIMEOUT", f"no result within {dispatch.timeout_seconds:.0f}s", started_at)
                return
            except EngineError as exc:
                # `is not None` for mypy, which otherwise takes an `Engine | None` never to be Probed
                if exc.code in UNREACHABLE and engine is not None and isinstance(engine, Probed):
                    await self._withdraw_if_down()
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
            metrics.JOBS(job.capability, "COMPLETED").inc()
        except asyncio.CancelledError:
            # Cancelled by the scheduler: tell it the slot is free again. Not a result.
            await asyncio.shield(self._fail(job, "CANCELLED", "interrupted on request"))

    async def _withdraw_if_down(self) -> None:
        """Probe the engines now, so an engine that went away is withdrawn before the scheduler
        reads the failure."""
        if await self.presence.probe_engines():
            await self.presence.announce()

    async def _command(self, subject: str, payload: object, msg_id: str) -> None:
        assert self._js is not None
        delay = 0.1
        while True:
            try:
                ack = await self._js.publish(subject, encode(payload), headers={s.HDR_MSG_ID: msg_id})
                # Before the job leaves `running`: a heartbeat that no longer holds it says where its report is.
                self.reported_seq = max(self.reported_seq, ack.seq)
                return
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("worker %s: report on %s not accepted (%s); retrying", self.worker_id, subject, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

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
        metrics.JOBS(job.capability, code).inc()
        await self._command(s.report(s.CMD_FAILED, self.worker_id), report, f"{job.job_id}:{job.attempt}:failed")

    def _progress_fn(self, job: JobInput, dispatch: Dispatch) -> ProgressFn:
        """Publish progress on the job's scoped subject: only its own bot and the gateway hear it."""
        subject = s.progress(dispatch.frontend, dispatch.bot_id, str(job.job_id))

        async def progress(fraction: float | None, message: str | None, partial_text: str | None) -> None:
            assert self._nc is not None
            await self._nc.publish(
                subject,
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
