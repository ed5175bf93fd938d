"""Webhook endpoints: a user's own, created, changed, rotated, disabled and deleted as events.

The scheduler knows of an endpoint only its owner, its version and what it is now (to write the
next Updated event whole); the batch loads an endpoint's stream before a command that names it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from events.types import (
    RecordedEvent,
    StreamType,
    WebhookEndpointCreated,
    WebhookEndpointDeleted,
    WebhookEndpointUpdated,
    WebhookSecretRotated,
)
from scheduler.admission import RefusalCode, Refused
from scheduler.effects import Emitter
from streams.messages import CreateWebhook, Decision, UpdateWebhook


@dataclass
class EndpointView:
    user_id: uuid.UUID
    version: int
    current: WebhookEndpointUpdated
    secret_sealed: str
    deleted: bool = False


class Webhooks:
    def __init__(self, out: Emitter) -> None:
        self.out = out
        self.endpoints: dict[uuid.UUID, EndpointView] = {}

    def apply(self, rec: RecordedEvent) -> None:
        event = rec.data
        if isinstance(event, WebhookEndpointCreated):
            current = WebhookEndpointUpdated(
                url=event.url, events=event.events, description=event.description, enabled=True
            )
            self.endpoints[rec.stream_id] = EndpointView(event.user_id, rec.version, current, event.secret_sealed)
            return
        view = self.endpoints.get(rec.stream_id)
        if view is None:
            return
        view.version = rec.version
        if isinstance(event, WebhookEndpointUpdated):
            view.current = event
        elif isinstance(event, WebhookSecretRotated):
            view.secret_sealed = event.secret_sealed
        elif isinstance(event, WebhookEndpointDeleted):
            view.deleted = True

    def create(self, cmd: CreateWebhook, reply_to: str | None, cause: str) -> None:
        if cmd.webhook_id in self.endpoints:  # the same command again: one endpoint
            self.out.reply(reply_to, Decision(ok=True, user_id=cmd.user_id))
            return
        created = WebhookEndpointCreated(
            user_id=cmd.user_id,
            url=cmd.url,
            events=cmd.events,
            description=cmd.description,
            secret_sealed=cmd.secret_sealed,
        )
        self.out.emit(StreamType.WEBHOOK, cmd.webhook_id, 1, created, cause)
        self.out.reply(reply_to, Decision(ok=True, user_id=cmd.user_id))

    def update(self, cmd: UpdateWebhook, reply_to: str | None, cause: str) -> None:
        view = self.endpoints.get(cmd.webhook_id)
        if view is None or view.deleted or view.user_id != cmd.user_id:
            self.out.refuse(reply_to, Refused(code=RefusalCode.WEBHOOK_NOT_FOUND, detail="no such webhook endpoint"))
            return
        stream = (StreamType.WEBHOOK, cmd.webhook_id)
        if cmd.delete:
            self.out.emit(*stream, view.version + 1, WebhookEndpointDeleted(user_id=view.user_id), cause)
        elif cmd.rotate_to is not None:
            until = datetime.fromtimestamp(self.out.clock(), UTC) + timedelta(seconds=cmd.grace_seconds)
            rotated = WebhookSecretRotated(
                secret_sealed=cmd.rotate_to, previous_sealed=view.secret_sealed, previous_expires_at=until
            )
            self.out.emit(*stream, view.version + 1, rotated, cause)
        else:
            now = view.current
            enabled = False if cmd.disable_reason else (now.enabled if cmd.enabled is None else cmd.enabled)
            updated = WebhookEndpointUpdated(
                url=cmd.url or now.url,
                events=cmd.events or now.events,
                description=now.description if cmd.description is None else cmd.description,
                enabled=enabled,
                disabled_reason=None
                if enabled
                else (cmd.disable_reason or now.disabled_reason or "disabled by its owner"),
                by="delivery" if cmd.disable_reason else "user",
            )
            if updated != now or cmd.disable_reason is None:
                self.out.emit(*stream, view.version + 1, updated, cause)
        self.out.reply(reply_to, Decision(ok=True, user_id=view.user_id))
