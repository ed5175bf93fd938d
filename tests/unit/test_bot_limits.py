"""Politeness: progress edits throttled per message and per group, backing off on a retry-after;
each user of a bot held to its flood limit."""

from __future__ import annotations

import pytest

from bots.limits import EditThrottle, Flooded, FloodGuard, RetryLater


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_an_edit_waits_its_interval_and_never_repeats_the_text() -> None:
    clock, sent = Clock(), []

    async def send(text: str) -> None:
        sent.append(text)

    throttle = EditThrottle(min_interval_s=3, clock=clock)
    throttle.remember(1, 10, "Queued.")
    assert not await throttle.edit(1, 10, "Queued.", send)  # the text it has
    assert not await throttle.edit(1, 10, "Working on it 10%", send)  # too soon after it was sent
    clock.now += 3
    assert await throttle.edit(1, 10, "Working on it 20%", send)
    assert not await throttle.edit(1, 10, "Working on it 20%", send)
    assert await throttle.edit(1, 11, "Queued. 2 ahead of you.", send)  # another message: its own interval
    assert sent == ["Working on it 20%", "Queued. 2 ahead of you."]


async def test_a_group_gets_at_most_twenty_edits_a_minute() -> None:
    clock, sent = Clock(), []

    async def send(text: str) -> None:
        sent.append(text)

    throttle = EditThrottle(min_interval_s=0, group_per_minute=20, clock=clock)
    for i in range(25):
        await throttle.edit("group", i, f"edit {i}", send, group=True)
        clock.now += 1
    assert len(sent) == 20
    assert throttle.wait_s("group", 99, group=True) == pytest.approx(35)
    assert throttle.wait_s("private", 1) == 0


async def test_a_retry_after_backs_off_the_chat_and_a_final_edit_still_lands() -> None:
    clock, sent, refusals = Clock(), [], [1]

    async def send(text: str) -> None:
        if refusals:
            refusals.pop()
            raise RetryLater(0.05)
        sent.append(text)

    throttle = EditThrottle(min_interval_s=0)
    assert not await throttle.edit(5, 1, "Working on it 50%", send)  # refused: skipped, chat backs off
    assert throttle.wait_s(5, 1) > 0
    refusals.append(1)
    assert await throttle.edit(5, 1, "Done.", send, final=True)  # waits out both retry-afters
    assert sent == ["Done."]
    del clock


def test_a_user_who_floods_a_bot_is_told_when_to_come_back() -> None:
    clock = Clock()
    guard = FloodGuard(per_minute=6, burst=2, clock=clock)
    guard.check("telegram:1")
    guard.check("telegram:1")
    with pytest.raises(Flooded) as flooded:
        guard.check("telegram:1")
    assert flooded.value.retry_after == pytest.approx(10)
    guard.check("telegram:2")  # others are not held
    clock.now += 10
    guard.check("telegram:1")
    with pytest.raises(Flooded):
        guard.check("telegram:1")


def test_the_flood_guard_forgets_the_least_recent_users_past_its_size() -> None:
    guard = FloodGuard(per_minute=1, burst=1, max_users=2, clock=Clock())
    for user in ("a", "b", "c"):
        guard.check(user)
    guard.check("a")  # "a" was forgotten to keep the memory bounded: a fresh bucket
    with pytest.raises(Flooded):
        guard.check("c")
