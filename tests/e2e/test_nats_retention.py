"""What nats-server keeps does not grow with history: the leader purges the commands it has handled
(all but the newest few, never one it has not), and the events relay is written without an fsync per
message, replacing a relay stream made before that."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import nats
import pytest
from nats.js.api import PersistMode

from scheduler.service import Scheduler
from streams import subjects as s
from streams import topology
from streams.messages import CancelJob, encode, subject_of
from tessera.embedded import EmbeddedNats
from tessera.nats_auth import embedded_server
from tests import conftest
from tests.conftest import Platform
from tests.e2e.test_reliability import own_nats

KEPT = 3


@pytest.mark.settings(commands_kept=KEPT)
async def test_the_leader_purges_handled_commands_but_the_newest_and_never_an_unhandled_one(
    platform: Platform,
) -> None:
    scheduler: Scheduler = platform.tasks["scheduler"][0]  # type: ignore[assignment]
    key = await platform.user_key()
    async with platform.client(key) as client:
        for n in range(10):
            request = {"capability": "echo", "params": {"prompt": f"{n}"}}
            job_id = (await client.post("/api/v1/jobs", json=request)).json()["job_id"]
            await platform.wait_status(client, job_id, {"COMPLETED"})
    nc = await nats.connect(platform.nats_url)
    try:
        js = nc.jetstream()
        before = (await js.stream_info(s.COMMANDS_STREAM)).state
        floor = (await js.consumer_info(s.COMMANDS_STREAM, s.SCHEDULER_CONSUMER)).ack_floor.stream_seq
        assert before.first_seq == 1 and floor >= 10  # ten submits at least, all handled

        purged = await scheduler.trim_commands(js)
        after = (await js.stream_info(s.COMMANDS_STREAM)).state
        assert purged == floor - KEPT and after.first_seq == floor + 1 - KEPT
        assert (await js.get_msg(s.COMMANDS_STREAM, after.first_seq)).seq == after.first_seq  # the newest stay
        assert await scheduler.trim_commands(js) == 0  # nothing more to purge

        # Commands nobody has handled: the scheduler stops, they wait in the stream.
        await platform.stop("scheduler")
        waiting = [CancelJob(command_id=uuid.uuid4(), job_id=uuid.uuid4(), user_id=uuid.uuid4()) for _ in range(5)]
        for command in waiting:
            await js.publish(subject_of(command), encode(command))
        assert await scheduler.trim_commands(js) == 0
        state = (await js.stream_info(s.COMMANDS_STREAM)).state
        assert state.first_seq == after.first_seq and state.messages == after.messages + len(waiting)
    finally:
        await nc.close()


async def test_an_events_stream_made_with_an_fsync_per_message_is_replaced_by_the_relay(tmp_path: Path) -> None:
    async with own_nats(tmp_path) as server:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            configs = {c.name: c for c in topology.stream_configs()}
            await js.delete_stream(s.EVENTS_STREAM)
            await js.add_stream(dataclasses.replace(configs[s.EVENTS_STREAM], persist_mode=None))
            command = CancelJob(command_id=uuid.uuid4(), job_id=uuid.uuid4(), user_id=uuid.uuid4())
            await js.publish(subject_of(command), encode(command))  # a command: its stream must be left alone
            await topology.ensure(js)
            events = await js.stream_info(s.EVENTS_STREAM)
            assert events.config.persist_mode in (PersistMode.ASYNC, "async")
            commands = await js.stream_info(s.COMMANDS_STREAM)
            assert commands.config.persist_mode in (None, PersistMode.DEFAULT, "default")
            assert commands.state.messages == 1
            await topology.ensure(js)  # and again: nothing to replace now
            assert (await js.stream_info(s.EVENTS_STREAM)).created == events.created
        finally:
            await nc.close()


def environ(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


def test_the_embedded_nats_server_runs_under_the_configured_memory_limit(tmp_path: Path) -> None:
    settings = conftest.test_settings(data_dir=tmp_path, nats_memory_limit_mb=96)
    server = embedded_server(settings, None).start(preferred_port=None)
    try:
        assert server.process is not None
        assert b"GOMEMLIMIT=96MiB" in environ(server.process.pid)
    finally:
        server.stop()
    unlimited = EmbeddedNats(tmp_path / "unlimited").start(preferred_port=None)
    try:
        assert unlimited.process is not None
        assert not any(v.startswith(b"GOMEMLIMIT=") for v in environ(unlimited.process.pid))
    finally:
        unlimited.stop()
