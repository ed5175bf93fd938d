"""NATS connections held by `streams.connection.opened` drain on exit rather than close mid-flight:
what was published goes out, and a handler still working on a message it received finishes,
its own publishes included. With NATS gone, the exit closes at once instead of hanging."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from streams import connection
from tests.e2e.test_reliability import own_nats


async def test_a_message_published_just_before_exit_is_delivered(nats_url: str) -> None:
    async with connection.opened_once(nats_url, "listener") as listener:
        sub = await listener.subscribe("test.drain.last")
        await listener.flush()
        async with connection.opened(nats_url, "publisher") as nc:
            await nc.publish("test.drain.last", b"goodbye")
        assert nc.is_closed
        assert (await sub.next_msg(timeout=2)).data == b"goodbye"


async def test_handlers_in_flight_finish_and_their_replies_go_out_before_the_connection_closes(nats_url: str) -> None:
    async with connection.opened_once(nats_url, "client") as client:
        replies = await client.subscribe("test.drain.replies")
        started = asyncio.Event()
        async with connection.opened(nats_url, "service") as nc:

            async def handle(msg: Msg) -> None:
                started.set()
                await asyncio.sleep(0.2)  # still working when the block exits
                await nc.publish("test.drain.replies", msg.data)

            await nc.subscribe("test.drain.requests", cb=handle)
            await nc.flush()
            for n in range(3):
                await client.publish("test.drain.requests", str(n).encode())
            await client.flush()
            await asyncio.wait_for(started.wait(), 5)
        # Closed mid-flight, the handler would have been cancelled in its sleep and sent nothing.
        assert [(await replies.next_msg(timeout=2)).data for _ in range(3)] == [b"0", b"1", b"2"]


@pytest.mark.timeout(60)
async def test_the_exit_does_not_wait_for_a_nats_server_that_is_gone(tmp_path: Path) -> None:
    async with own_nats(tmp_path) as server:
        async with connection.opened(server.url, "orphan", drain_timeout_s=1) as nc:
            assert server.process is not None
            server.process.kill()
            server.process.wait()
            while nc.is_connected:
                await asyncio.sleep(0.05)
            exited = time.monotonic()
        assert nc.is_closed
        assert time.monotonic() - exited < 5
