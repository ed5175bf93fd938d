"""/api/v1/keys: a user's own API keys: list, create, revoke, rotate.

Only a user's own key manages keys (a bot acting for a user cannot). A new key is shown once, in
the answer that creates it; only its hash is ever stored. Every change is an event on the user's
stream (ApiKeyIssued, ApiKeyRevoked), and a revoked key stops working on every gateway at once:
each one follows the revocations on the events stream and drops the key from its cache.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter

from base.keys import USER_KEY_PREFIX, new_key
from gateway.contract import problems
from gateway.decisions import carried_out
from gateway.deps import KeyHolder, KeyHolderDep, Services, ServicesDep
from gateway.errors import Problem
from gateway.inputs import check_storable
from gateway.schemas import KeyCreate, KeyList, KeyRevoked, NewKey
from projector import queries
from streams import subjects as s
from streams.messages import IssueApiKey, RevokeKey

router = APIRouter(prefix="/api/v1/keys", tags=["keys"])


def _owner(holder: KeyHolder) -> uuid.UUID:
    if holder.user_id is None:
        raise Problem(403, "USER_KEY_REQUIRED", "keys are managed with the user's own API key, not a frontend's")
    return holder.user_id


def parse_key_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise Problem(400, "INVALID_KEY_ID", f"{raw!r} is not a key id (a UUID)") from None


def _view(row: Any) -> dict[str, Any]:
    return {
        "key_id": row["key_id"],
        "prefix": row["prefix"],
        "label": row["label"],
        "created_at": row["created_at"],
        "revoked_at": row["revoked_at"],
    }


_USER_KEY = "USER_KEY_REQUIRED: keys are managed with a user's own key, not a frontend's"


@router.get(
    "",
    response_model=KeyList,
    responses=problems(403, _403=_USER_KEY),
    summary="Your API keys (never the keys themselves)",
)
async def list_keys(services: ServicesDep, holder: KeyHolderDep) -> dict[str, Any]:
    async with services.pool.acquire() as conn:
        rows = await queries.keys_of(conn, _owner(holder))
    return {"keys": [{**_view(r), "current": r["key_id"] == holder.key_id} for r in rows]}


async def issue(services: Services, owner: uuid.UUID, label: str | None, replaces: uuid.UUID | None) -> dict[str, Any]:
    check_storable(label, "label")
    key, key_hash, prefix = new_key(USER_KEY_PREFIX)
    command = IssueApiKey(
        command_id=uuid.uuid4(),
        user_id=owner,
        key_id=uuid.uuid4(),
        key_hash=key_hash,
        key_prefix=prefix,
        label=label,
        replaces=replaces,
    )
    await carried_out(services, s.CMD_KEY_ISSUE, command, msg_id=f"key-issue:{command.command_id}")
    return {
        "key_id": command.key_id,
        "key": key,
        "prefix": prefix,
        "label": label,
        "note": "the key is shown this once; store it now",
    }


@router.post(
    "",
    status_code=201,
    response_model=NewKey,
    responses=problems(403, 409, 503, _403=_USER_KEY, _409="TOO_MANY_KEYS"),
    summary="Create an API key (shown once)",
)
async def create_key(body: KeyCreate, services: ServicesDep, holder: KeyHolderDep) -> dict[str, Any]:
    return await issue(services, _owner(holder), body.label, None)


@router.post(
    "/{key_id}/rotate",
    status_code=201,
    response_model=NewKey,
    responses=problems(403, 404, 409, 503, _403=_USER_KEY, _404="KEY_NOT_FOUND", _409="TOO_MANY_KEYS"),
    summary="Replace a key by a new one, revoking it",
)
async def rotate_key(key_id: str, body: KeyCreate, services: ServicesDep, holder: KeyHolderDep) -> dict[str, Any]:
    return await issue(services, _owner(holder), body.label, parse_key_id(key_id))


@router.delete(
    "/{key_id}",
    response_model=KeyRevoked,
    responses=problems(403, 404, 503, _403=_USER_KEY, _404="KEY_NOT_FOUND"),
    summary="Revoke a key: it stops working at once",
)
async def revoke_key(key_id: str, services: ServicesDep, holder: KeyHolderDep) -> dict[str, Any]:
    parsed = parse_key_id(key_id)
    command = RevokeKey(command_id=uuid.uuid4(), key_id=parsed, user_id=_owner(holder), by="user")
    await carried_out(services, s.CMD_KEY_REVOKE, command, msg_id=f"key-revoke:{command.command_id}")
    services.key_revoked(parsed)  # this gateway at once; the others when the event reaches them
    return {"key_id": parsed, "revoked": True}
