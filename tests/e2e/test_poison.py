"""A command the scheduler cannot store is refused and set aside once; it never stops the writer.

These commands go straight onto the command stream, past the gateway's own checks, as a buggy or
hostile client of NATS could send them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import nats
import pytest

from events.types import user_stream_id
from gateway.decisions import http_status
from scheduler.service import Scheduler
from streams import subjects as s
from streams.commands import CommandBus
from streams.messages import SubmitJob
from tests.conftest import Platform


def submit(user_id: uuid.UUID, prompt: str) -> SubmitJob:
    return SubmitJob(
        command_id=uuid.uuid4(),
        job_id=uuid.uuid4(),
        user_id=user_id,
        frontend="api",
        capability="echo",
        params={"prompt": prompt},
        deadline=datetime.now(UTC) + timedelta(seconds=8),
    )


@pytest.mark.timeout(60)
async def test_a_nul_in_a_command_is_refused_and_the_next_users_job_is_accepted(platform_parts: Platform) -> None:
    scheduler = Scheduler(
        platform_parts.settings, nats_url=platform_parts.nats_url, database_url=platform_parts.database_url
    )
    await platform_parts.start("scheduler", scheduler)
    await asyncio.wait_for(scheduler.is_leader.wait(), 10)
    await platform_parts.start_worker(engines=("echo",))
    key = await platform_parts.user_key("poisoner")
    attacker = user_stream_id("web", "poisoner")

    nc = await nats.connect(platform_parts.nats_url)
    bus = await CommandBus(nc, "poison-test").start()
    try:
        started = time.monotonic()
        poison, fine = await asyncio.gather(
            bus.send(s.CMD_SUBMIT, submit(attacker, "a\u0000b"), msg_id="poison-1", timeout=8),
            bus.send(s.CMD_SUBMIT, submit(attacker, "an honest job"), msg_id="fine-1", timeout=8),
        )
        elapsed = time.monotonic() - started
        assert (poison.ok, http_status(poison.code), poison.code) == (False, 422, "UNSTORABLE_INPUT")
        assert fine.ok and fine.job is not None and elapsed < 2.0  # accepted: the gateway answers 202
        # A NUL in a params key, alone in its batch this time.
        bad_key = SubmitJob(
            command_id=uuid.uuid4(),
            job_id=uuid.uuid4(),
            user_id=attacker,
            frontend="api",
            capability="echo",
            params={"prompt": "x", "k\u0000": 1},
            deadline=datetime.now(UTC) + timedelta(seconds=8),
        )
        refused = await bus.send(s.CMD_SUBMIT, bad_key, msg_id="poison-2", timeout=8)
        assert refused.code == "UNSTORABLE_INPUT"

        dead = await nc.jetstream().subscribe(s.DEAD_LETTER_ALL, ordered_consumer=True)
        reasons = []
        while True:
            try:
                msg = await dead.next_msg(timeout=1)
            except TimeoutError:
                break
            reasons.append((msg.headers or {}).get(s.HDR_ERROR, ""))
        assert len(reasons) == 2 and all("cannot be stored" in r for r in reasons)
    finally:
        await bus.close()
        await nc.close()
    assert scheduler.is_leader.is_set() and scheduler.terms == 1  # it led throughout, never restarted
    async with platform_parts.client(key) as client:
        await platform_parts.wait_status(client, str(fine.job.job_id), {"COMPLETED"})
