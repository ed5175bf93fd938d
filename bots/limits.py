"""Politeness, in memory, per bot: toward the platforms (`EditThrottle`) and from its users (`FloodGuard`).

Telegram allows about one message a second per chat and 20 a minute per group, answers 429 with
`retry_after` beyond that, and refuses an edit that changes nothing ("message is not modified");
Discord has similar buckets. A progress message edited on every worker report would hit all of
these, so every edit goes through one `EditThrottle` per bot. A user who sends requests faster
than a person would is held off by `FloodGuard` before anything reaches the API, on top of the
plan's own rate limit, which the scheduler enforces.

Both are per process and forget everything on restart: a restarted bot starts polite.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

from base.errors import TesseraError


class RetryLater(TesseraError):
    """The platform asked to wait (HTTP 429 and its retry-after): raised by a platform's send or
    edit function for `EditThrottle` to back off."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the platform asks to retry in {seconds:g}s")
        self.seconds = seconds


class Flooded(TesseraError):
    """A user sent requests faster than this bot takes them; `retry_after` seconds until the next."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many requests; the next one in {retry_after:.0f}s")
        self.retry_after = retry_after


Clock = Callable[[], float]
ChatId = Hashable
MessageKey = Hashable


@dataclass
class _Message:
    text: str | None = None  # what the message says now, as far as this bot knows
    sent_at: float = float("-inf")


@dataclass
class _Chat:
    edits: deque[float] = field(default_factory=deque)  # edit times in the last minute (groups)
    blocked_until: float = float("-inf")  # the platform's retry-after


class EditThrottle:
    """When a bot may edit a message: at most once every `min_interval_s` per message, never with
    the text it already has, at most `group_per_minute` edits a minute in a group chat, and not
    before a retry-after the platform gave for the chat.

        throttle = runtime.edits
        await throttle.edit(chat_id, message_id, text, send=lambda t: bot.edit(chat_id, message_id, t),
                            group=chat.type != "private")

    `edit` skips (returns False) a progress edit it may not make now: the next update brings a
    newer text anyway. With `final=True` (the last state of a message: done, failed, cancelled) it
    waits until it may, and retries after a retry-after, so the last word always lands.
    """

    def __init__(
        self,
        *,
        min_interval_s: float = 3.0,
        group_per_minute: int = 20,
        max_messages: int = 10_000,
        clock: Clock = time.monotonic,
    ) -> None:
        self.min_interval_s = min_interval_s
        self.group_per_minute = group_per_minute
        self.max_messages = max_messages
        self._clock = clock
        self._messages: dict[MessageKey, _Message] = {}
        self._chats: dict[ChatId, _Chat] = {}

    def remember(self, chat_id: ChatId, message_id: MessageKey, text: str) -> None:
        """Record that a message was just sent with `text` (so an edit to the same text is skipped
        and the next edit waits its interval)."""
        self._message(chat_id, message_id).text = text
        self._message(chat_id, message_id).sent_at = self._clock()

    def wait_s(self, chat_id: ChatId, message_id: MessageKey, *, group: bool = False) -> float:
        """Seconds until this message may be edited again (0: now)."""
        now = self._clock()
        message = self._messages.get((chat_id, message_id))
        chat = self._chats.get(chat_id)
        waits = [0.0]
        if message is not None:
            waits.append(message.sent_at + self.min_interval_s - now)
        if chat is not None:
            waits.append(chat.blocked_until - now)
            if group:
                while chat.edits and now - chat.edits[0] >= 60:
                    chat.edits.popleft()
                if len(chat.edits) >= self.group_per_minute:
                    waits.append(chat.edits[0] + 60 - now)
        return max(waits)

    def back_off(self, chat_id: ChatId, seconds: float) -> None:
        """The platform said to wait `seconds` before writing to this chat again."""
        chat = self._chats.setdefault(chat_id, _Chat())
        chat.blocked_until = max(chat.blocked_until, self._clock() + seconds)

    async def edit(
        self,
        chat_id: ChatId,
        message_id: MessageKey,
        text: str,
        send: Callable[[str], Awaitable[object]],
        *,
        group: bool = False,
        final: bool = False,
        max_wait_s: float = 120.0,
    ) -> bool:
        """Edit the message to `text` through `send` if allowed (see the class); True if it was sent.

        `send` raises `RetryLater` on the platform's 429; any other error of `send` propagates.
        """
        message = self._message(chat_id, message_id)
        deadline = self._clock() + max_wait_s
        while True:
            if message.text == text:
                return False
            wait = self.wait_s(chat_id, message_id, group=group)
            if wait > 0:
                if not final or self._clock() + wait > deadline:
                    return False
                await asyncio.sleep(wait)
                continue
            try:
                await send(text)
            except RetryLater as exc:
                self.back_off(chat_id, exc.seconds)
                if not final:
                    return False
                continue
            now = self._clock()
            message.text, message.sent_at = text, now
            if group:
                self._chats.setdefault(chat_id, _Chat()).edits.append(now)
            return True

    def forget(self, chat_id: ChatId, message_id: MessageKey) -> None:
        """A message that will not be edited again (its job ended)."""
        self._messages.pop((chat_id, message_id), None)

    def _message(self, chat_id: ChatId, message_id: MessageKey) -> _Message:
        key = (chat_id, message_id)
        message = self._messages.get(key)
        if message is None:
            if len(self._messages) >= self.max_messages:  # forget the oldest (dicts keep insertion order)
                del self._messages[next(iter(self._messages))]
            message = self._messages[key] = _Message()
        return message


class FloodGuard:
    """Per user of one bot: at most `per_minute` requests a minute, `burst` of them at once (a token
    bucket). `check(user)` raises `Flooded` with the seconds to wait, or takes one request."""

    def __init__(
        self, *, per_minute: int = 6, burst: int = 3, max_users: int = 100_000, clock: Clock = time.monotonic
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(max(1, burst))
        self.max_users = max_users
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # user -> (tokens, at)

    def check(self, user: str) -> None:
        """Take one request for `user`, or raise Flooded (and take nothing)."""
        now = self._clock()
        tokens, at = self._buckets.pop(user, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1:
            self._buckets[user] = (tokens, now)
            raise Flooded((1 - tokens) / self.rate)
        if len(self._buckets) >= self.max_users:
            del self._buckets[next(iter(self._buckets))]
        self._buckets[user] = (tokens - 1, now)  # re-inserted: the least recently seen come first
