"""What a bot carries between a request and its answer: `ReplyContext` (in the job, so a restarted
bot still knows the chat and the message to edit) and `Delivery` (a result ready to post)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from base.sealing import Sealer, Unsealable


@dataclass(frozen=True, kw_only=True)
class ReplyContext:
    """What a bot needs to answer a job's user later, from the notification alone (restarts too).

    It travels in the job (`reply_context`, JSON) and comes back in its `Notification`.
    `chat_id`: where to answer; `message_id`: the progress message to edit; `user_message_id`: the
    user's request (to reply to in groups); `group`: whether the chat is a group (edit limits);
    Discord also keeps `interaction_token` and `application_id` (follow-ups for 15 minutes) and
    `channel_id` (the token sealed: `TokenSeal`). `extra` holds anything else a platform wants back.
    """

    chat_id: int | str
    message_id: int | str | None = None
    user_message_id: int | str | None = None
    group: bool = False
    interaction_token: str | None = None
    application_id: int | str | None = None
    channel_id: int | str | None = None
    created_at: float | None = None  # epoch seconds the request came (Discord tokens last 15 min)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object sent as the job's `reply_context` (None fields left out)."""
        out: dict[str, Any] = {"chat_id": self.chat_id, "group": self.group}
        for name in (
            "message_id",
            "user_message_id",
            "interaction_token",
            "application_id",
            "channel_id",
            "created_at",
        ):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.extra:
            out["extra"] = dict(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ReplyContext | None:
        """The context a notification brings back; None when the job had none (not this bot's kind)."""
        if not data or "chat_id" not in data:
            return None
        return cls(
            chat_id=data["chat_id"],
            message_id=data.get("message_id"),
            user_message_id=data.get("user_message_id"),
            group=bool(data.get("group", False)),
            interaction_token=data.get("interaction_token"),
            application_id=data.get("application_id"),
            channel_id=data.get("channel_id"),
            created_at=data.get("created_at"),
            extra=dict(data.get("extra") or {}),
        )


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """An artifact as the bot can hand it on: its bytes when they fit the platform's limit, else a
    link: the API's signed, expiring `signed_url`, which needs no key (`url_expires_at` says until
    when); from an API that signs no links, the artifact's own URL."""

    artifact_id: uuid.UUID
    kind: str  # image | video | audio | text
    content_type: str
    filename: str
    size_bytes: int
    data: bytes | None = None
    url: str | None = None
    url_expires_at: datetime | None = None
    text: str | None = None  # a text artifact's text


class TokenSeal:
    """Seals a Discord interaction token for a job's `reply_context`; only the same bot opens it.

    `base.sealing` under a key derived from the bot's Discord token, the bot's own secret. A new
    Discord token makes the sealed ones of running jobs unreadable: those results are posted in the
    channel, as after the 15 minutes. A token from before sealing (no prefix) is used as it is.
    """

    PREFIX = "sealed:"

    def __init__(self, bot_token: str) -> None:
        self._sealer = Sealer(bot_token, "tessera-discord-interaction-token")

    def seal(self, token: str) -> str:
        return self.PREFIX + self._sealer.seal(token)

    def open(self, sealed: str | None) -> str | None:
        """The token, or None when there is none or it was sealed with another key (or altered)."""
        if not sealed or not sealed.startswith(self.PREFIX):
            return sealed
        try:
            return self._sealer.open(sealed[len(self.PREFIX) :])
        except Unsealable:
            return None
