"""The scheduler's outbox against a real nats-server: a relay that repeats duplicates nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import nats
import pytest

from events.types import JobSubmitted, RecordedEvent
from scheduler.outbox import Outbox, Outgoing
from streams import subjects as s


def recorded(seq: int) -> RecordedEvent:
    data = JobSubmitted(
        user_id=uuid.uuid4(),
        frontend="api",
        capability="echo",
        model="echo",
        params={"prompt": f"event {seq}"},
        priority=0,
        cost_tokens=0,
    )
    return RecordedEvent(
        seq=seq,
        event_id=uuid.uuid4(),
        stream_type="job",
        stream_id=uuid.uuid4(),
        version=1,
        recorded_at=datetime.now(UTC),
        causation_id=None,
        data=data,
    )


async def stored_seqs(js) -> list[int]:  # type: ignore[no-untyped-def]
    """The Tessera-Seq of every message in the events stream, in stream order."""
    info = await js.stream_info(s.EVENTS_STREAM)
    seqs = []
    for n in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(s.EVENTS_STREAM, n)
        seqs.append(int(msg.headers[s.HDR_SEQ]))
    return seqs


async def test_a_repeated_relay_stores_each_event_once(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        outbox = Outbox(nc, js)
        first = [recorded(seq) for seq in range(1, 6)]
        await outbox._send_until_accepted([Outgoing(events=first)])
        assert await stored_seqs(js) == [1, 2, 3, 4, 5]
        assert outbox.relayed_seq == 5

        # A new leader relays from an older position: events 3-5 again, with 6-8 new.
        again = first[2:] + [recorded(seq) for seq in range(6, 9)]
        await outbox._send_until_accepted([Outgoing(events=again)])
        assert await stored_seqs(js) == [1, 2, 3, 4, 5, 6, 7, 8]
        assert outbox.relayed_seq == 8
    finally:
        await nc.close()


async def test_a_message_no_stream_took_is_not_counted_as_sent(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        outbox = Outbox(nc, js)
        await js.delete_stream(s.EVENTS_STREAM)  # the server answers "no responders"
        with pytest.raises(nats.errors.Error, match="JetStream refused"):
            await outbox._send([Outgoing(events=[recorded(1)])])
        assert outbox.relayed_seq == 0
    finally:
        await nc.close()
