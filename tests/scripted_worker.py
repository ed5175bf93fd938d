"""A worker the test drives by hand, speaking the real worker protocol over real NATS.

It announces whatever models, slots and loaded models the test gives it (GPU models included,
though nothing here can run them), records the dispatches it receives in order, and reports a
result or a failure only when the test says so. The scheduler cannot tell it from a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime

import msgspec
import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from streams import subjects as s
from streams.messages import Dispatch, ReportCompleted, ReportFailed, ReportStarted, WorkerStatus, encode


class ScriptedWorker:
    def __init__(
        self,
        nats_url: str,
        worker_id: str,
        models: list[str],
        *,
        slots: int = 1,
        loaded: list[str] | None = None,
        max_resolution: int | None = None,
        heartbeat_interval_s: float = 0.3,
    ) -> None:
        self.nats_url = nats_url
        self.worker_id = worker_id
        self.models = models
        self.slots = slots
        self.loaded = loaded if loaded is not None else list(models)
        self.max_resolution = max_resolution
        self.heartbeat_interval_s = heartbeat_interval_s
        self.instance_id = uuid.uuid4()
        self.dispatches: list[Dispatch] = []
        self.running: set[uuid.UUID] = set()
        self.received = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []

    def status(self) -> WorkerStatus:
        return WorkerStatus(
            worker_id=self.worker_id,
            instance_id=self.instance_id,
            capabilities=[],
            engines=["test"],
            models=self.models,
            loaded_models=self.loaded,
            slots=self.slots,
            running=sorted(self.running),
            sent_at=datetime.now(UTC),
            heartbeat_interval_s=self.heartbeat_interval_s,
            max_resolution=self.max_resolution,
        )

    async def start(self, *, consume: bool = True) -> ScriptedWorker:
        """Connect, announce and heartbeat; fetch dispatches too unless `consume` is False (then
        the test calls `consume()` when it wants the worker to start reading)."""
        self.nc = await nats.connect(self.nats_url)
        self.js = self.nc.jetstream()
        self.kv = await self.js.key_value(s.WORKERS_BUCKET)
        self.sub = await self.js.pull_subscribe(
            s.dispatch(self.worker_id),
            durable=f"worker-{self.worker_id}",
            stream=s.DISPATCH_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, ack_wait=30),
        )
        await self.kv.put(self.worker_id, encode(self.status()))
        self._tasks = [asyncio.create_task(self._heartbeat())]
        if consume:
            self.consume()
        return self

    def consume(self) -> None:
        self._tasks.append(asyncio.create_task(self._consume()))

    async def crash(self) -> None:
        """Stop as a killed process does: no goodbye, the dispatches it did not fetch left behind."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.nc.close()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.kv.delete(self.worker_id)
        await self.nc.close()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            await self.kv.put(self.worker_id, encode(self.status()))

    async def _consume(self) -> None:
        decoder = msgspec.json.Decoder(Dispatch)
        while True:
            try:
                msgs = await self.sub.fetch(16, timeout=0.5)
            except TimeoutError:
                continue
            for msg in msgs:
                await msg.ack()
                dispatch = decoder.decode(msg.data)
                async with self.received:
                    self.dispatches.append(dispatch)
                    self.running.add(dispatch.job_id)
                    self.received.notify_all()

    async def wait_for(self, count: int, timeout: float = 10) -> list[Dispatch]:
        """Wait until `count` dispatches have arrived in all; returns them in arrival order."""
        async with self.received:
            await asyncio.wait_for(self.received.wait_for(lambda: len(self.dispatches) >= count), timeout)
            return list(self.dispatches)

    async def finish(
        self, dispatch: Dispatch, *, usage: dict[str, float] | None = None, fail: str | None = None
    ) -> None:
        """Report the attempt started and then completed (or failed with code `fail`)."""
        tag = f"{dispatch.job_id}:{dispatch.attempt}"
        started = ReportStarted(job_id=dispatch.job_id, worker_id=self.worker_id, attempt=dispatch.attempt)
        await self.js.publish(
            s.report(s.CMD_STARTED, self.worker_id), encode(started), headers={s.HDR_MSG_ID: f"{tag}:started"}
        )
        if fail:
            report: object = ReportFailed(
                job_id=dispatch.job_id,
                worker_id=self.worker_id,
                attempt=dispatch.attempt,
                code=fail,
                message="scripted failure",
            )
            subject, suffix = s.report(s.CMD_FAILED, self.worker_id), "failed"
        else:
            report = ReportCompleted(
                job_id=dispatch.job_id,
                worker_id=self.worker_id,
                attempt=dispatch.attempt,
                artifacts=[],
                execution_time_seconds=0.5,
                usage=usage or {},
            )
            subject, suffix = s.report(s.CMD_COMPLETED, self.worker_id), "completed"
        await self.js.publish(subject, encode(report), headers={s.HDR_MSG_ID: f"{tag}:{suffix}"})
        self.running.discard(dispatch.job_id)
