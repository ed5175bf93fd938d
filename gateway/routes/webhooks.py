"""/api/v1/webhooks: a user's webhook endpoints (create, list, read, update, delete, rotate the
secret), their delivery logs and replays, and the secret that signs per-job webhooks.

Every change is a command the scheduler decides and an event on the endpoint's stream. A secret is
made here, shown once, and travels and is stored only sealed (gateway.webhook_secrets). The
deliveries themselves are the webhook service's (webhooks/); this router asks it, over NATS, for an
endpoint's log and for a replay. docs/webhooks.md.
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any
from urllib.parse import urlsplit

import msgspec
from fastapi import APIRouter

from base.addresses import Allowlist, refusal
from base.config import Settings
from gateway.contract import problems
from gateway.decisions import carried_out
from gateway.deps import CurrentPrincipal, Services, ServicesDep
from gateway.errors import Problem
from gateway.inputs import check_storable
from gateway.webhook_schemas import (
    DeliveryList,
    JobWebhookSecret,
    Replayed,
    WebhookCreate,
    WebhookDeleted,
    WebhookList,
    WebhookRotate,
    WebhookUpdate,
    WebhookView,
    WebhookWithSecret,
)
from gateway.webhook_secrets import SecretBox, new_secret
from projector import queries
from streams import subjects as s
from streams.messages import CreateWebhook, UpdateWebhook
from streams.webhook_messages import Deliveries, DeliveriesRequest, ReplayAnswer, ReplayRequest

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])

MAX_WEBHOOKS_PER_USER = 20
_UNAVAILABLE = "SCHEDULER_UNAVAILABLE, WEBHOOKS_UNAVAILABLE (not configured), WEBHOOK_SERVICE_UNAVAILABLE"
_NOT_FOUND = problems(404, _404="WEBHOOK_NOT_FOUND: no such endpoint of yours")
_CHANGED = {**_NOT_FOUND, **problems(503, _503=_UNAVAILABLE)}  # a command, or a question to the webhook service


def check_webhook_url(url: str, settings: Settings) -> None:
    """Refuse (422 INVALID_WEBHOOK_URL) a URL the webhook service would never call: not https (http
    only when the operator allows it), no host, credentials in it, or a literal address that is not
    public. Names are resolved, and checked again, on every delivery."""
    check_storable(url, "webhook")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError:
        raise Problem(422, "INVALID_WEBHOOK_URL", "the webhook URL cannot be read") from None
    schemes = ("https", "http") if settings.webhook_allow_http else ("https",)
    if parts.scheme not in schemes:
        raise Problem(422, "INVALID_WEBHOOK_URL", f"a webhook URL must be {' or '.join(schemes)}")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise Problem(422, "INVALID_WEBHOOK_URL", "a webhook URL needs a host and no user name or password")
    try:
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return
    reason = refusal(address)
    if reason and not Allowlist(settings.webhook_allowlist).allows(parts.hostname, address):
        raise Problem(422, "INVALID_WEBHOOK_URL", f"webhooks are not sent there: {reason}")


def _box(services: Services) -> SecretBox:
    if not services.settings.url_signing_key:
        raise Problem(
            503, "WEBHOOKS_UNAVAILABLE", "webhooks need TESSERA_URL_SIGNING_KEY, shared with the webhook service"
        )
    return SecretBox(services.settings.url_signing_key)


def _view(row: Any) -> dict[str, Any]:
    return {
        "webhook_id": row["id"],
        "url": row["url"],
        "events": list(row["events"]),
        "description": row["description"],
        "enabled": row["enabled"],
        "disabled_reason": row["disabled_reason"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "previous_secret_expires_at": row["previous_expires_at"],
    }


def _webhook_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise Problem(404, "WEBHOOK_NOT_FOUND", f"no webhook endpoint {raw!r}") from None


async def _own(services: Services, raw: str, user_id: uuid.UUID) -> Any:
    async with services.pool.acquire() as conn:
        row = await queries.webhook(conn, _webhook_id(raw))
    if row is None or row["user_id"] != user_id:
        raise Problem(404, "WEBHOOK_NOT_FOUND", f"no webhook endpoint {raw}")
    return row


@router.get(
    "/job-secret",
    response_model=JobWebhookSecret,
    responses=problems(503, _503=_UNAVAILABLE),
    summary="The secret that signs your per-job webhooks",
)
async def job_secret(services: ServicesDep, principal: CurrentPrincipal) -> dict[str, Any]:
    return {"secret": _box(services).job_secret(principal.user_id)}


@router.api_route("/job-secret", methods=["POST", "PATCH", "DELETE"], include_in_schema=False)
async def job_secret_other_methods() -> None:
    """`job-secret` is no endpoint's id (a route of its own, or PATCH would try it as one): GET only."""
    raise Problem(405, "METHOD_NOT_ALLOWED", "only GET is allowed here", headers={"Allow": "GET"})


@router.post(
    "",
    status_code=201,
    response_model=WebhookWithSecret,
    responses=problems(409, 422, 503, _409="TOO_MANY_WEBHOOKS", _422="INVALID_WEBHOOK_URL", _503=_UNAVAILABLE),
    summary="Create an endpoint (secret shown once)",
)
async def create_webhook(body: WebhookCreate, services: ServicesDep, principal: CurrentPrincipal) -> dict[str, Any]:
    check_webhook_url(body.url, services.settings)
    check_storable(body.description, "description")
    async with services.pool.acquire() as conn:
        if len(await queries.webhooks_of(conn, principal.user_id)) >= MAX_WEBHOOKS_PER_USER:
            raise Problem(409, "TOO_MANY_WEBHOOKS", f"at most {MAX_WEBHOOKS_PER_USER} endpoints; delete one first")
    secret = new_secret()
    command = CreateWebhook(
        command_id=uuid.uuid4(),
        webhook_id=uuid.uuid4(),
        user_id=principal.user_id,
        url=body.url,
        events=[e.value for e in body.events],
        description=body.description,
        secret_sealed=_box(services).seal(secret),
    )
    await carried_out(services, s.CMD_WEBHOOK_CREATE, command, msg_id=f"webhook-create:{command.command_id}")
    return {**_view(await _own(services, str(command.webhook_id), principal.user_id)), "secret": secret}


@router.get("", response_model=WebhookList, summary="Your webhook endpoints (never their secrets)")
async def list_webhooks(services: ServicesDep, principal: CurrentPrincipal) -> dict[str, Any]:
    async with services.pool.acquire() as conn:
        rows = await queries.webhooks_of(conn, principal.user_id)
    return {"webhooks": [_view(r) for r in rows]}


@router.get("/{webhook_id}", response_model=WebhookView, responses=_NOT_FOUND, summary="One endpoint")
async def get_webhook(webhook_id: str, services: ServicesDep, principal: CurrentPrincipal) -> dict[str, Any]:
    return _view(await _own(services, webhook_id, principal.user_id))


async def _update(services: Services, row: Any, **changes: Any) -> None:
    command = UpdateWebhook(command_id=uuid.uuid4(), webhook_id=row["id"], user_id=row["user_id"], **changes)
    await carried_out(services, s.CMD_WEBHOOK_UPDATE, command, msg_id=f"webhook-update:{command.command_id}")


@router.patch("/{webhook_id}", response_model=WebhookView, responses=_CHANGED, summary="Change an endpoint")
async def update_webhook(
    webhook_id: str, body: WebhookUpdate, services: ServicesDep, principal: CurrentPrincipal
) -> dict[str, Any]:
    row = await _own(services, webhook_id, principal.user_id)
    if body.url is not None:
        check_webhook_url(body.url, services.settings)
    check_storable(body.description, "description")
    events = [e.value for e in body.events] if body.events is not None else None
    await _update(services, row, url=body.url, events=events, description=body.description, enabled=body.enabled)
    return _view(await _own(services, webhook_id, principal.user_id))


@router.delete("/{webhook_id}", response_model=WebhookDeleted, responses=_CHANGED, summary="Delete an endpoint")
async def delete_webhook(webhook_id: str, services: ServicesDep, principal: CurrentPrincipal) -> dict[str, Any]:
    row = await _own(services, webhook_id, principal.user_id)
    await _update(services, row, delete=True)
    return {"webhook_id": row["id"], "deleted": True}


@router.post(
    "/{webhook_id}/rotate",
    status_code=201,
    response_model=WebhookWithSecret,
    responses=_CHANGED,
    summary="A new secret (shown once); the old one also signs during the grace period",
)
async def rotate_secret(
    webhook_id: str, body: WebhookRotate, services: ServicesDep, principal: CurrentPrincipal
) -> dict[str, Any]:
    row = await _own(services, webhook_id, principal.user_id)
    secret = new_secret()
    await _update(services, row, rotate_to=_box(services).seal(secret), grace_seconds=body.grace_seconds)
    return {**_view(await _own(services, webhook_id, principal.user_id)), "secret": secret}


async def _ask(services: Services, subject: str, request: object) -> bytes:
    try:
        msg = await services.nc.request(subject, msgspec.json.encode(request), timeout=5)
    except Exception:  # no responder, or none in time: the webhook service is not running
        raise Problem(
            503, "WEBHOOK_SERVICE_UNAVAILABLE", "the webhook service did not answer", headers={"Retry-After": "5"}
        ) from None
    return bytes(msg.data)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=DeliveryList,
    responses=_CHANGED,
    summary="The endpoint's deliveries, newest first: every attempt, its status, latency and answer",
)
async def deliveries(webhook_id: str, services: ServicesDep, principal: CurrentPrincipal) -> dict[str, Any]:
    row = await _own(services, webhook_id, principal.user_id)
    raw = await _ask(services, s.WEBHOOK_DELIVERIES, DeliveriesRequest(webhook_id=row["id"]))
    answer = msgspec.json.decode(raw, type=Deliveries)
    return {"deliveries": msgspec.to_builtins(answer.deliveries)}


@router.post(
    "/{webhook_id}/deliveries/{message_id}/replay",
    status_code=202,
    response_model=Replayed,
    responses={**_CHANGED, **problems(404, _404="WEBHOOK_NOT_FOUND, DELIVERY_NOT_FOUND")},
    summary="Send a delivery again, now (the same webhook-id)",
)
async def replay(
    webhook_id: str, message_id: str, services: ServicesDep, principal: CurrentPrincipal
) -> dict[str, Any]:
    row = await _own(services, webhook_id, principal.user_id)
    raw = await _ask(services, s.WEBHOOK_REPLAY, ReplayRequest(webhook_id=row["id"], message_id=message_id))
    answer = msgspec.json.decode(raw, type=ReplayAnswer)
    if not answer.found:
        raise Problem(404, "DELIVERY_NOT_FOUND", f"no delivery {message_id} to this endpoint")
    return {"message_id": message_id, "state": answer.state or "pending"}
