"""Operator actions: migrate, users and their plans, plans, frontend keys, replay a job's history."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from base import db
from base.config import Settings
from base.keys import FRONTEND_KEY_PREFIX, PLATFORMS, USER_KEY_PREFIX, new_key
from events import store
from events.job import evolve
from events.types import plan_stream_id, user_stream_id
from migrations import apply as apply_migrations
from projector import queries
from projector.queries import wait_for_projection
from streams import connection, topology
from streams import subjects as s
from streams.commands import CommandBus
from streams.messages import (
    ChangeUserPlan,
    CreateFrontendKey,
    CreateUser,
    Decision,
    DefinePlan,
    IssueApiKey,
    RevokeKey,
)


async def migrate(database_url: str, nats_url: str | None = None) -> list[str]:
    async with db.connection(database_url, json_codec=False) as conn:
        applied = await apply_migrations(conn)
    if nats_url:
        # The operator's limits, as every service would set them: migrate must not undo them.
        await topology.ensure_at(nats_url, name="tessera-migrate", limits=topology.StreamLimits.of(Settings.from_env()))
    return applied


async def _send_and_wait(nats_url: str, database_url: str, subject: str, command: object, msg_id: str) -> Decision:
    async with connection.opened_once(nats_url, "tessera-admin") as nc:
        bus = await CommandBus(nc).start()
        try:
            decision = await bus.send(subject, command, msg_id=msg_id, timeout=15)
        finally:
            await bus.close()
    if not decision.ok:
        raise SystemExit(f"tessera: refused: {decision.code}: {decision.detail}")
    async with db.pool(database_url, max_size=1) as pool:  # the key works once the read model has it
        if not await wait_for_projection(pool, decision.seq, timeout=15):
            raise SystemExit("tessera: the projector has not caught up; is it running?")
    return decision


async def create_user(
    nats_url: str, database_url: str, *, platform: str, user_id: str, plan: str, display_name: str | None = None
) -> tuple[uuid.UUID, str]:
    if platform not in PLATFORMS:
        raise SystemExit(f"tessera: platform must be one of {', '.join(PLATFORMS)}")
    key, key_hash, prefix = new_key(USER_KEY_PREFIX)
    command = CreateUser(
        command_id=uuid.uuid4(),
        platform=platform,
        platform_user_id=user_id,
        plan=plan,
        display_name=display_name,
        key_id=uuid.uuid4(),
        key_hash=key_hash,
        key_prefix=prefix,
    )
    decision = await _send_and_wait(
        nats_url, database_url, s.admin("user-create"), command, f"user-create:{command.command_id}"
    )
    assert decision.user_id is not None  # the scheduler names the user it registered
    return decision.user_id, key


async def create_frontend_key(nats_url: str, database_url: str, *, frontend: str, bot_id: str | None) -> str:
    if frontend not in PLATFORMS:
        raise SystemExit(f"tessera: frontend must be one of {', '.join(PLATFORMS)}")
    if bot_id is not None and not s.is_token(bot_id):
        raise SystemExit("tessera: bot id may hold only letters, digits, '_' and '-'")
    key, key_hash, prefix = new_key(FRONTEND_KEY_PREFIX)
    command = CreateFrontendKey(
        command_id=uuid.uuid4(),
        frontend=frontend,
        bot_id=bot_id,
        key_id=uuid.uuid4(),
        key_hash=key_hash,
        key_prefix=prefix,
    )
    await _send_and_wait(
        nats_url, database_url, s.admin("frontend-create"), command, f"frontend-create:{command.command_id}"
    )
    return key


async def list_keys(
    database_url: str, *, platform: str | None = None, user_id: str | None = None
) -> list[dict[str, Any]]:
    """A user's API keys, or (no user named) every frontend key; never the keys themselves."""
    async with db.connection(database_url, json_codec=False) as conn:
        if platform and user_id:
            rows = await queries.user_keys(conn, user_stream_id(platform, user_id))
        else:
            rows = await queries.all_frontend_keys(conn)
    return [dict(r) for r in rows]


async def _key_owner(database_url: str, key_id: uuid.UUID) -> tuple[str, asyncpg.Record]:
    """('user', row with user_id) or ('frontend', row with frontend and bot_id) of a key."""
    async with db.connection(database_url, json_codec=False) as conn:
        row = await queries.api_key_owner(conn, key_id)
        if row is not None:
            return "user", row
        row = await queries.frontend_key_owner(conn, key_id)
        if row is not None:
            return "frontend", row
    raise SystemExit(f"tessera: no key {key_id}")


async def issue_key(nats_url: str, database_url: str, *, platform: str, user_id: str, label: str | None = None) -> str:
    """Another API key for an existing user."""
    key, key_hash, prefix = new_key(USER_KEY_PREFIX)
    command = IssueApiKey(
        command_id=uuid.uuid4(),
        user_id=user_stream_id(platform, user_id),
        key_id=uuid.uuid4(),
        key_hash=key_hash,
        key_prefix=prefix,
        label=label,
        by="operator",
    )
    await _send_and_wait(nats_url, database_url, s.CMD_KEY_ISSUE, command, f"key-issue:{command.command_id}")
    return key


async def revoke_key(nats_url: str, database_url: str, key_id: uuid.UUID, reason: str | None = None) -> str:
    """Revoke a user's or a frontend's key by its id; says whose it was."""
    kind, row = await _key_owner(database_url, key_id)
    if kind == "user":
        command = RevokeKey(
            command_id=uuid.uuid4(), key_id=key_id, user_id=row["user_id"], by="operator", reason=reason
        )
        owner = f"user {row['user_id']}"
    else:
        command = RevokeKey(
            command_id=uuid.uuid4(),
            key_id=key_id,
            frontend=row["frontend"],
            bot_id=row["bot_id"],
            by="operator",
            reason=reason,
        )
        owner = f"frontend {row['frontend']}/{row['bot_id'] or '-'}"
    await _send_and_wait(nats_url, database_url, s.CMD_KEY_REVOKE, command, f"key-revoke:{command.command_id}")
    return owner


async def rotate_key(nats_url: str, database_url: str, key_id: uuid.UUID) -> str:
    """A new key in place of `key_id`, which is revoked: at once for a user's key (one commit), right
    after the new one is issued for a frontend's."""
    kind, row = await _key_owner(database_url, key_id)
    if kind == "frontend":
        key = await create_frontend_key(nats_url, database_url, frontend=row["frontend"], bot_id=row["bot_id"])
        await revoke_key(nats_url, database_url, key_id, reason="rotated")
        return key
    key, key_hash, prefix = new_key(USER_KEY_PREFIX)
    command = IssueApiKey(
        command_id=uuid.uuid4(),
        user_id=row["user_id"],
        key_id=uuid.uuid4(),
        key_hash=key_hash,
        key_prefix=prefix,
        replaces=key_id,
        by="operator",
    )
    await _send_and_wait(nats_url, database_url, s.CMD_KEY_ISSUE, command, f"key-issue:{command.command_id}")
    return key


async def change_user_plan(nats_url: str, database_url: str, *, platform: str, user_id: str, plan: str) -> uuid.UUID:
    """Move a user to another plan: a UserPlanChanged event, in force from their next submit."""
    command = ChangeUserPlan(command_id=uuid.uuid4(), platform=platform, platform_user_id=user_id, plan=plan)
    decision = await _send_and_wait(
        nats_url, database_url, s.admin("user-plan"), command, f"user-plan:{command.command_id}"
    )
    assert decision.user_id is not None  # the scheduler names the user whose plan changed
    return decision.user_id


async def define_plan(nats_url: str, database_url: str, command: DefinePlan) -> None:
    """Create a plan or change some of its terms: a new PlanDefined event for the plan."""
    await _send_and_wait(nats_url, database_url, s.admin("plan-define"), command, f"plan-define:{command.command_id}")


async def list_plans(database_url: str) -> list[dict[str, Any]]:
    async with db.connection(database_url, json_codec=False) as conn:
        rows = await queries.all_plans(conn)
    return [dict(r) for r in rows]


async def plan_history(database_url: str, tier: str) -> list[str]:
    """Every definition the plan has had, oldest first: what explains a past bill."""
    async with db.connection(database_url, json_codec=False) as conn:
        records = await store.load_stream(conn, plan_stream_id(tier))
    return [f"{_when(r.recorded_at)}  v{r.version}  {_kv(_fields(r.data))}  ({r.causation_id or '-'})" for r in records]


async def job_history(database_url: str, job_id: uuid.UUID) -> list[str]:
    """A job's events as a readable timeline, folded as they go (an auditor's replay)."""
    async with db.connection(database_url, json_codec=False) as conn:
        records = await store.load_stream(conn, job_id)
    if not records:
        raise SystemExit(f"tessera: no job {job_id}")
    lines, job, start = [], None, records[0].recorded_at
    for rec in records:
        job = evolve(job, rec)
        offset = (rec.recorded_at - start).total_seconds()
        details = {k: v for k, v in _fields(rec.data).items() if k not in ("params", "reply_context", "artifacts")}
        if hasattr(rec.data, "artifacts"):
            details["artifacts"] = [f"{a.kind}/{a.format} {a.size_bytes}B" for a in rec.data.artifacts]
        lines.append(
            f"v{rec.version:<3} {_when(rec.recorded_at)} +{offset:8.3f}s  {rec.type:<18} -> "
            f"{job.status.value:<9} {_kv(details)}"
        )
    return lines


def _fields(event: msgspec.Struct) -> dict[str, object]:
    return msgspec.structs.asdict(event)


def _kv(values: dict[str, object]) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items() if v is not None)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
