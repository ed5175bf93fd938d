"""One NATS user per role: what a worker, a bot and the gateway may not do, and the whole platform
working with every service on its own credentials (a nats-server with the generated configuration)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig

from bots.completions import CompletionFeed
from scheduler.service import Scheduler
from streams import connection, topology
from streams import subjects as s
from streams.messages import Notification, Progress, ReportCompleted, SubmitJob, encode
from tessera.embedded import EmbeddedNats
from tessera.nats_auth import CORE_ROLES, Credentials
from tests.conftest import Platform, gateway_and_projector
from tests.e2e.test_inputs import SENTENCE
from worker_node.engines import build
from worker_node.service import Worker

ROLES = [*CORE_ROLES, "worker:w1", "worker:w2", "bot:telegram:tg-1", "bot:telegram:tg-2"]


@dataclass
class AuthNats:
    server: EmbeddedNats
    credentials: Credentials

    def url(self, role: str) -> str:
        return self.credentials.url(self.server.url, role)

    def violations(self) -> list[str]:
        log = (self.server.store_dir / "nats-server.log").read_text()
        return [line for line in log.splitlines() if "Violation" in line]


@pytest.fixture
def auth_nats(tmp_path: Path) -> Iterator[AuthNats]:
    credentials = Credentials(tmp_path / "credentials.json")
    credentials.ensure(ROLES)
    server = EmbeddedNats(tmp_path / "nats", authorization=credentials.authorization()).start(preferred_port=None)
    try:
        yield AuthNats(server, credentials)
    finally:
        server.stop()


@pytest.fixture
async def streams(auth_nats: AuthNats) -> AuthNats:
    nc = await connection.connect_once(auth_nats.url("admin"), "test-admin")
    try:
        await topology.ensure(nc.jetstream())
    finally:
        await nc.close()
    return auth_nats


@contextlib.asynccontextmanager
async def client(url: str) -> AsyncIterator[tuple[NATS, list[str]]]:
    """A connection and the errors the server sent it (a refused subscription arrives that way)."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await connection.connect_once(url, "test", error_cb=on_error)
    try:
        yield nc, errors
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def refused(errors: list[str], subject: str) -> bool:
    for _ in range(40):
        if any("permissions violation" in e.lower() and subject.lower() in e.lower() for e in errors):
            return True
        await asyncio.sleep(0.05)
    return False


def test_the_credentials_file_is_the_owners_alone(auth_nats: AuthNats) -> None:
    assert auth_nats.credentials.path.stat().st_mode & 0o777 == 0o600
    assert auth_nats.server.conf_file.stat().st_mode & 0o777 == 0o600
    assert len(set(json.loads(auth_nats.credentials.path.read_text()).values())) == len(ROLES)


async def test_a_wrong_password_is_refused(auth_nats: AuthNats) -> None:
    url = auth_nats.url("worker:w1").replace(auth_nats.credentials.passwords["worker:w1"], "guess")
    nc = NATS()
    try:
        with pytest.raises(nats.errors.Error):
            await nc.connect(url, allow_reconnect=False, max_reconnect_attempts=0)
    finally:
        await nc.close()  # the refused connection's socket, which nats-py does not close on its own


async def test_a_worker_reads_only_its_own_dispatches(streams: AuthNats) -> None:
    async with client(streams.url("admin")) as (admin, _):
        for worker_id in ("w1", "w2"):
            await admin.jetstream().publish(s.dispatch(worker_id), f"for {worker_id}".encode())
    async with client(streams.url("worker:w1")) as (nc, errors):
        js = nc.jetstream(timeout=1)
        config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT)
        own = await js.pull_subscribe(s.dispatch("w1"), durable="worker-w1", stream=s.DISPATCH_STREAM, config=config)
        [msg] = await own.fetch(1, timeout=2)
        assert msg.data == b"for w1"
        await msg.ack()

        await nc.subscribe(s.dispatch("w2"))
        assert await refused(errors, s.dispatch("w2"))
        await nc.subscribe(s.DISPATCH_ALL)
        assert await refused(errors, s.DISPATCH_ALL)
        with pytest.raises(nats.errors.TimeoutError):  # its request is dropped: no answer comes
            await js.pull_subscribe(s.dispatch("w2"), durable="worker-w2", stream=s.DISPATCH_STREAM, config=config)
        with pytest.raises(nats.errors.TimeoutError):  # its own consumer's name, another worker's subject
            await js.pull_subscribe(s.dispatch("w2"), durable="worker-w1x", stream=s.DISPATCH_STREAM, config=config)
        with pytest.raises(nats.errors.TimeoutError):
            await js.get_last_msg(s.DISPATCH_STREAM, s.dispatch("w2"))
        # The create subject allowed to it names its own filter; a body asking for more is refused by the server.
        for body in ({"filter_subject": s.DISPATCH_ALL}, {"filter_subjects": [s.dispatch("w2")]}):
            reply = await nc.request(
                f"$JS.API.CONSUMER.CREATE.{s.DISPATCH_STREAM}.worker-w1.{s.dispatch('w1')}",
                json.dumps(
                    {
                        "stream_name": s.DISPATCH_STREAM,
                        "config": {"name": "worker-w1", "durable_name": "worker-w1", "ack_policy": "explicit", **body},
                    }
                ).encode(),
                timeout=2,
            )
            assert "error" in json.loads(reply.data), reply.data
    async with client(streams.url("admin")) as (admin, _):
        left = await admin.jetstream().get_last_msg(s.DISPATCH_STREAM, s.dispatch("w2"))
        assert left.data == b"for w2"  # still there, for w2 alone


async def test_a_worker_cannot_read_events_or_send_others_commands(streams: AuthNats) -> None:
    async with client(streams.url("admin")) as (admin, _):
        await admin.jetstream().publish(s.event("job", str(uuid.uuid4()), "JobSubmitted.v1"), b"{}")
    async with client(streams.url("worker:w1")) as (nc, errors):
        js = nc.jetstream(timeout=1)
        await nc.subscribe(s.EVENTS_ALL)
        assert await refused(errors, s.EVENTS_ALL)
        with pytest.raises(nats.errors.TimeoutError):
            await js.pull_subscribe(s.EVENTS_ALL, durable="peek", stream=s.EVENTS_STREAM)
        with pytest.raises(nats.errors.TimeoutError):
            await js.subscribe(s.EVENTS_ALL, stream=s.EVENTS_STREAM, ordered_consumer=True)
        with pytest.raises(nats.errors.TimeoutError):
            await js.get_last_msg(s.EVENTS_STREAM, s.EVENTS_ALL)
        with pytest.raises(nats.errors.TimeoutError):
            await js.stream_info(s.EVENTS_STREAM)
        report = ReportCompleted(
            job_id=uuid.uuid4(), worker_id="w2", attempt=1, artifacts=[], execution_time_seconds=0.1
        )
        for subject in (
            s.CMD_SUBMIT,
            s.admin("plan-define"),
            s.report(s.CMD_COMPLETED, "w2"),
            s.CMD_COMPLETED,
            s.event("job", str(uuid.uuid4()), "JobCompleted.v1"),
            s.dispatch("w2"),
            s.control("w2"),
            s.done("telegram", "tg-1", str(uuid.uuid4())),
        ):
            with pytest.raises(nats.errors.TimeoutError):
                await js.publish(subject, encode(report))
            assert await refused(errors, subject)
        ack = await js.publish(s.report(s.CMD_COMPLETED, "w1"), encode(report))  # its own subject: stored
        assert ack.stream == s.COMMANDS_STREAM
        with pytest.raises(nats.errors.TimeoutError):  # another worker's status in the fleet
            await js.publish(f"$KV.{s.WORKERS_BUCKET}.w2", b"{}")


async def test_a_bot_consumes_only_its_own_completions(streams: AuthNats) -> None:
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    async with client(streams.url("admin")) as (admin, _):
        for bot_id, job_id in (("tg-1", mine), ("tg-2", theirs)):
            note = Notification(job_id=job_id, status="COMPLETED", frontend="telegram", bot_id=bot_id)
            await admin.jetstream().publish(s.done("telegram", bot_id, str(job_id)), encode(note))
    async with client(streams.url("bot:telegram:tg-1")) as (nc, errors):
        js = nc.jetstream(timeout=1)
        with pytest.raises(nats.errors.TimeoutError):
            await js.pull_subscribe(s.done_for("telegram", "tg-2"), durable="bot-telegram-tg-2", stream=s.NOTIFY_STREAM)
        with pytest.raises(nats.errors.TimeoutError):  # its own consumer's name, every bot's completions
            await js.pull_subscribe(s.done_for("telegram"), durable="bot-telegram-tg-1", stream=s.NOTIFY_STREAM)
        await nc.subscribe(s.NOTIFY_ALL)
        assert await refused(errors, s.NOTIFY_ALL)
        with pytest.raises(nats.errors.TimeoutError):
            await js.publish(s.CMD_SUBMIT, b"{}")
    feed = CompletionFeed(streams.url("bot:telegram:tg-1"), "telegram", "tg-1")
    got: list[Notification] = []

    async def handle(notification: Notification) -> None:
        got.append(notification)
        await feed.stop()

    await asyncio.wait_for(feed.run(handle), 10)
    assert [n.job_id for n in got] == [mine]


async def test_a_bot_hears_only_its_own_jobs_progress(streams: AuthNats) -> None:
    mine, theirs, web = (uuid.uuid4() for _ in range(3))
    async with client(streams.url("bot:telegram:tg-1")) as (nc, errors):
        own = await nc.subscribe(s.progress_for("telegram", "tg-1"))
        for subject in (
            s.progress("telegram", "tg-2", str(theirs)),
            s.progress_for("telegram", "tg-2"),
            s.job_progress(str(theirs)),
            s.PROGRESS_ALL,
        ):
            await nc.subscribe(subject)
            assert await refused(errors, subject)
        async with client(streams.url("worker:w1")) as (worker, worker_errors):
            for frontend, bot_id, job_id in (
                ("telegram", "tg-2", theirs),
                ("web", None, web),
                ("telegram", "tg-1", mine),
            ):
                progress = Progress(job_id=job_id, attempt=1, fraction=0.5)
                await worker.publish(s.progress(frontend, bot_id, str(job_id)), encode(progress))
            await worker.flush()
            assert worker_errors == []
        msg = await own.next_msg(timeout=5)
        assert msg.subject == s.progress("telegram", "tg-1", str(mine))
        with pytest.raises(nats.errors.TimeoutError):  # nothing of another bot's or the website's jobs
            await own.next_msg(timeout=0.5)
    async with client(streams.url("gateway")) as (gateway, errors):  # the SSE follows any job's progress
        sub = await gateway.subscribe(s.job_progress(str(theirs)))
        async with client(streams.url("worker:w1")) as (worker, _):
            await worker.publish(s.progress("telegram", "tg-2", str(theirs)), b"{}")
        assert (await sub.next_msg(timeout=5)).subject == s.progress("telegram", "tg-2", str(theirs))
        assert errors == []


async def test_the_gateway_cannot_consume_dispatches_nor_write_events(streams: AuthNats) -> None:
    async with client(streams.url("gateway")) as (nc, errors):
        js = nc.jetstream(timeout=1)
        await nc.subscribe(s.dispatch("w1"))
        assert await refused(errors, s.dispatch("w1"))
        with pytest.raises(nats.errors.TimeoutError):
            await js.pull_subscribe(s.dispatch("w1"), durable="worker-w1", stream=s.DISPATCH_STREAM)
        for subject in (
            s.dispatch("w1"),
            s.event("job", str(uuid.uuid4()), "JobCompleted.v1"),
            s.report(s.CMD_COMPLETED, "w1"),
            s.admin("user-create"),
        ):
            with pytest.raises(nats.errors.TimeoutError):
                await js.publish(subject, b"{}")
        assert await js.publish(s.CMD_SUBMIT, b"{}")  # what it is for


@contextlib.asynccontextmanager
async def platform_on(nats_: AuthNats, database_url: str) -> AsyncIterator[Platform]:
    """Scheduler, projector, gateway and worker w1, each logged in as its own NATS user."""
    async with gateway_and_projector(
        nats_.url("admin"),
        database_url,
        gateway_nats_url=nats_.url("gateway"),
        projector_nats_url=nats_.url("projector"),
    ) as platform:
        scheduler = Scheduler(platform.settings, nats_url=nats_.url("scheduler"), database_url=database_url)
        await platform.start("scheduler", scheduler)
        await asyncio.wait_for(scheduler.is_leader.wait(), 10)
        worker = Worker(
            nats_url=nats_.url("worker:w1"),
            worker_id="w1",
            engines=[build(e) for e in ("echo", "piper", "pocketsphinx")],
            heartbeat_interval_s=platform.settings.heartbeat_interval_s,
            started_grace_s=0.0,
        )
        await platform.start("worker", worker)
        await asyncio.wait_for(worker.ready.wait(), 10)
        yield platform


async def test_the_platform_works_with_a_user_per_role(streams: AuthNats, database_url: str) -> None:
    async with platform_on(streams, database_url) as platform:
        key = await platform.user_key(plan="free")
        async with platform.client(key) as http:
            tts = (await http.post("/api/v1/jobs", json={"capability": "tts", "params": {"prompt": SENTENCE}})).json()
            done = await platform.wait_status(http, tts["job_id"], {"COMPLETED"})
            stream = await http.get(f"/api/v1/jobs/{tts['job_id']}/stream")  # the gateway hears events
            assert "COMPLETED" in stream.text
            wav = (await http.get(done["artifacts"][0]["url"])).content  # stored by the worker, read by the gateway
            upload = (await http.post("/api/v1/uploads", content=wav, headers={"Content-Type": "audio/wav"})).json()
            stt = (
                await http.post(
                    "/api/v1/jobs", json={"capability": "stt", "params": {"input_upload": upload["upload_id"]}}
                )
            ).json()
            await platform.wait_status(http, stt["job_id"], {"COMPLETED"}, timeout=60)  # the worker read the upload
            assert (await http.delete(f"/api/v1/uploads/{upload['upload_id']}")).status_code in (200, 204)

        bot_key = await platform.frontend_key("telegram", "tg-1")
        async with platform.client(bot_key, **{"Tessera-User-Ref": "telegram:42"}) as http:
            job_id = (await http.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "hi"}})).json()[
                "job_id"
            ]
        feed = CompletionFeed(streams.url("bot:telegram:tg-1"), "telegram", "tg-1")
        got: list[Notification] = []

        async def handle(notification: Notification) -> None:
            got.append(notification)
            await feed.stop()

        await asyncio.wait_for(feed.run(handle), 20)
        assert str(got[0].job_id) == job_id
    assert streams.violations() == []  # no role was refused anything it needed


async def test_the_scheduler_sets_aside_a_report_on_another_workers_subject(
    streams: AuthNats, database_url: str
) -> None:
    async with platform_on(streams, database_url) as platform:
        job_id = uuid.uuid4()
        forged = ReportCompleted(job_id=job_id, worker_id="w2", attempt=1, artifacts=[], execution_time_seconds=0.1)
        submit = SubmitJob(
            command_id=uuid.uuid4(),
            job_id=job_id,
            user_id=uuid.uuid4(),
            frontend="web",
            capability="echo",
            params={"prompt": "x"},
            deadline=datetime.now(UTC) + timedelta(minutes=1),
        )
        async with client(streams.url("worker:w1")) as (nc, _):
            js = nc.jetstream(timeout=2)
            await js.publish(s.report(s.CMD_COMPLETED, "w1"), encode(forged))  # w2's report, w1's subject
            await js.publish(s.report(s.CMD_FAILED, "w1"), encode(submit))  # a submit dressed as a report
        async with client(platform.nats_url) as (admin, _):
            sub = await admin.jetstream().subscribe(s.DEAD_LETTER_ALL, ordered_consumer=True)
            reasons = []
            for _ in range(2):
                msg = await sub.next_msg(timeout=10)
                reasons.append((msg.subject, msg.headers[s.HDR_ERROR]))
    assert reasons == [
        ("tessera.dead.cmd.job.completed.w1", "a ReportCompleted may not arrive on tessera.cmd.job.completed.w1"),
        ("tessera.dead.cmd.job.failed.w1", "a SubmitJob may not arrive on tessera.cmd.job.failed.w1"),
    ]
