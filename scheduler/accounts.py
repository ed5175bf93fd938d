"""Accounts as the scheduler keeps them: users and their keys, plans, and frontends' keys.

Folded from the user, plan and frontend streams; the handlers of the admin commands (create a
user, change their plan, define a plan, issue and revoke keys) decide here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import msgspec

from base.catalog import Catalog
from events.types import (
    AnyEvent,
    ApiKeyIssued,
    ApiKeyRevoked,
    FrontendKeyIssued,
    FrontendKeyRevoked,
    PlanDefined,
    RecordedEvent,
    StreamType,
    UserPlanChanged,
    UserRegistered,
    frontend_stream_id,
    plan_stream_id,
    user_stream_id,
)
from scheduler.admission import RefusalCode, Refused
from scheduler.effects import Emitter
from streams.messages import (
    ChangeUserPlan,
    CreateFrontendKey,
    CreateUser,
    Decision,
    DefinePlan,
    IssueApiKey,
    RegisterUser,
    RevokeKey,
    SubmitJob,
)

MAX_KEYS_PER_USER = 20


@dataclass
class UserView:
    id: uuid.UUID
    plan: str
    version: int
    keys: dict[uuid.UUID, bool] = field(default_factory=dict)  # every key issued -> still valid


@dataclass
class FrontendView:
    version: int = 0
    keys: dict[uuid.UUID, bool] = field(default_factory=dict)  # every key issued -> still valid


class Accounts:
    """Users, plans and frontends, and the commands that change them."""

    def __init__(self, out: Emitter, catalog: Catalog) -> None:
        self.out = out
        self.catalog = catalog
        self.users: dict[uuid.UUID, UserView] = {}
        self.plans: dict[str, PlanDefined] = {}
        self.plan_versions: dict[str, int] = {}
        self.frontends: dict[uuid.UUID, FrontendView] = {}  # by frontend stream id

    def apply(self, rec: RecordedEvent) -> None:
        """Fold one event of a user, plan or frontend stream."""
        event = rec.data
        if isinstance(event, PlanDefined):
            self.plans[event.tier] = event
            self.plan_versions[event.tier] = rec.version
        elif isinstance(event, UserRegistered):
            self.users[rec.stream_id] = UserView(id=rec.stream_id, plan=event.plan, version=rec.version)
        elif isinstance(event, ApiKeyIssued | ApiKeyRevoked | UserPlanChanged):
            user = self.users.get(rec.stream_id)
            if user:
                user.version = rec.version
                if isinstance(event, UserPlanChanged):
                    user.plan = event.plan
                else:
                    user.keys[event.key_id] = isinstance(event, ApiKeyIssued)
        elif isinstance(event, FrontendKeyIssued | FrontendKeyRevoked):
            frontend = self.frontends.setdefault(rec.stream_id, FrontendView())
            frontend.version = rec.version
            frontend.keys[event.key_id] = isinstance(event, FrontendKeyIssued)

    # --- reading -------------------------------------------------------------------------------

    def plan_of(self, user_id: uuid.UUID) -> PlanDefined:
        user = self.users.get(user_id)
        return self.plans.get(user.plan if user else "free") or self.plans["free"]

    def concurrency_limit(self, user_id: uuid.UUID) -> int:
        return self.plan_of(user_id).max_concurrent_jobs

    def user_for(self, cmd: SubmitJob, cause: str) -> UserView | None:
        """The submitting user; a frontend's first submit for someone registers them on the free plan."""
        user = self.users.get(cmd.user_id)
        if user is not None:
            return user
        if not cmd.user_ref or ":" not in cmd.user_ref:
            return None
        platform, platform_user_id = cmd.user_ref.split(":", 1)
        if user_stream_id(platform, platform_user_id) != cmd.user_id:
            return None
        self.out.emit(
            StreamType.USER,
            cmd.user_id,
            1,
            UserRegistered(platform=platform, platform_user_id=platform_user_id, plan="free"),
            cause,
        )
        return self.users[cmd.user_id]

    # --- commands ------------------------------------------------------------------------------

    def create_user(self, cmd: CreateUser, reply_to: str | None, cause: str) -> None:
        if cmd.plan not in self.plans:
            self.out.refuse(reply_to, Refused(code=RefusalCode.UNKNOWN_PLAN, detail=f"no plan {cmd.plan!r}"))
            return
        stream_id = user_stream_id(cmd.platform, cmd.platform_user_id)
        user = self.users.get(stream_id)
        if user is None:
            self.out.emit(
                StreamType.USER,
                stream_id,
                1,
                UserRegistered(
                    platform=cmd.platform,
                    platform_user_id=cmd.platform_user_id,
                    plan=cmd.plan,
                    display_name=cmd.display_name,
                ),
                cause,
            )
            user = self.users[stream_id]
        self.out.emit(
            StreamType.USER,
            stream_id,
            user.version + 1,
            ApiKeyIssued(key_id=cmd.key_id, key_hash=cmd.key_hash, prefix=cmd.key_prefix),
            cause,
        )
        self.out.reply(reply_to, Decision(ok=True, user_id=stream_id))

    def register_user(self, cmd: RegisterUser, reply_to: str | None, cause: str) -> None:
        """A website sign-up: the user on the free plan, once (a repeat changes nothing)."""
        stream_id = user_stream_id(cmd.platform, cmd.platform_user_id)
        if stream_id not in self.users:
            self.out.emit(
                StreamType.USER,
                stream_id,
                1,
                UserRegistered(platform=cmd.platform, platform_user_id=cmd.platform_user_id, plan="free"),
                cause,
            )
        self.out.reply(reply_to, Decision(ok=True, user_id=stream_id))

    def change_user_plan(self, cmd: ChangeUserPlan, reply_to: str | None, cause: str) -> None:
        if cmd.plan not in self.plans:
            self.out.refuse(reply_to, Refused(code=RefusalCode.UNKNOWN_PLAN, detail=f"no plan {cmd.plan!r}"))
            return
        stream_id = user_stream_id(cmd.platform, cmd.platform_user_id)
        user = self.users.get(stream_id)
        if user is None:
            self.out.refuse(
                reply_to,
                Refused(code=RefusalCode.USER_NOT_FOUND, detail=f"no user {cmd.platform}:{cmd.platform_user_id}"),
            )
            return
        if user.plan != cmd.plan:
            self.out.emit(
                StreamType.USER,
                stream_id,
                user.version + 1,
                UserPlanChanged(plan=cmd.plan, previous_plan=user.plan, changed_by=cmd.changed_by),
                cause,
            )
        self.out.reply(reply_to, Decision(ok=True, user_id=stream_id))

    def define_plan(self, cmd: DefinePlan, reply_to: str | None, cause: str) -> None:
        """Create a plan, or change some of an existing plan's terms (the rest stay)."""
        current = self.plans.get(cmd.tier)
        changes = {
            k: v
            for k, v in msgspec.structs.asdict(cmd).items()
            if k not in ("command_id", "tier", "unlimited_tokens") and v is not None
        }
        if cmd.unlimited_tokens:
            changes["daily_token_limit"] = None
        try:
            if current is None:
                plan = PlanDefined(tier=cmd.tier, **{"name": cmd.tier.title(), "allowed_models": [], **changes})
            else:
                plan = msgspec.structs.replace(current, **changes)
            plan = msgspec.convert(msgspec.to_builtins(plan), PlanDefined)  # re-validate every field
            self._check_plan(plan)
        except (TypeError, msgspec.ValidationError, ValueError) as exc:
            self.out.refuse(reply_to, Refused(code=RefusalCode.INVALID_PLAN, detail=f"plan {cmd.tier!r}: {exc}"))
            return
        if plan != current:
            self.out.emit(
                StreamType.PLAN, plan_stream_id(cmd.tier), self.plan_versions.get(cmd.tier, 0) + 1, plan, cause
            )
        self.out.reply(reply_to, Decision(ok=True))

    def _check_plan(self, plan: PlanDefined) -> None:
        if not 0 <= plan.priority <= 3:
            raise ValueError("priority must be 0 (free) to 3 (admin)")
        numbers = {
            "requests_per_minute": plan.requests_per_minute,
            "max_concurrent_jobs": plan.max_concurrent_jobs,
            "max_queued_jobs": plan.max_queued_jobs,
            "max_resolution": plan.max_resolution,
        }
        for name, value in numbers.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("uploads_per_day", "upload_bytes_per_day", "max_upload_bytes"):
            if getattr(plan, name) is not None and getattr(plan, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if plan.daily_token_limit is not None and plan.daily_token_limit < 0:
            raise ValueError("daily_token_limit must not be negative")
        unknown = [m for m in plan.allowed_models if m != "*" and m not in self.catalog]
        if unknown:
            raise ValueError(f"unknown models {', '.join(unknown)}")

    def create_frontend_key(self, cmd: CreateFrontendKey, reply_to: str | None, cause: str) -> None:
        stream_id = frontend_stream_id(cmd.frontend, cmd.bot_id)
        frontend = self.frontends.get(stream_id) or FrontendView()
        if cmd.key_id not in frontend.keys:  # else the same command again: one key
            self.out.emit(
                StreamType.FRONTEND,
                stream_id,
                frontend.version + 1,
                FrontendKeyIssued(
                    frontend=cmd.frontend,
                    bot_id=cmd.bot_id,
                    key_id=cmd.key_id,
                    key_hash=cmd.key_hash,
                    prefix=cmd.key_prefix,
                ),
                cause,
            )
        self.out.reply(reply_to, Decision(ok=True))

    def issue_api_key(self, cmd: IssueApiKey, reply_to: str | None, cause: str) -> None:
        """Another key for an existing user; with `replaces`, that key is revoked in the same commit."""
        user = self.users.get(cmd.user_id)
        if user is None:
            self.out.refuse(reply_to, Refused(code=RefusalCode.USER_NOT_FOUND, detail="no such user"))
            return
        if cmd.key_id in user.keys:  # the same command again: one key
            self.out.reply(reply_to, Decision(ok=True, user_id=user.id))
            return
        if cmd.replaces is not None and not user.keys.get(cmd.replaces):
            self.out.refuse(
                reply_to, Refused(code=RefusalCode.KEY_NOT_FOUND, detail=f"no valid key {cmd.replaces} to replace")
            )
            return
        if cmd.replaces is None and sum(user.keys.values()) >= MAX_KEYS_PER_USER:
            self.out.refuse(
                reply_to,
                Refused(
                    code=RefusalCode.TOO_MANY_KEYS,
                    detail=(f"a user holds at most {MAX_KEYS_PER_USER} valid keys; revoke one first"),
                ),
            )
            return
        self.out.emit(
            StreamType.USER,
            user.id,
            user.version + 1,
            ApiKeyIssued(key_id=cmd.key_id, key_hash=cmd.key_hash, prefix=cmd.key_prefix, label=cmd.label),
            cause,
        )
        if cmd.replaces is not None:
            self.out.emit(
                StreamType.USER,
                user.id,
                user.version + 1,
                ApiKeyRevoked(key_id=cmd.replaces, revoked_by=cmd.by, reason=f"rotated to {cmd.key_id}"),
                cause,
            )
        self.out.reply(reply_to, Decision(ok=True, user_id=user.id))

    def revoke_key(self, cmd: RevokeKey, reply_to: str | None, cause: str) -> None:
        """Revoke a user's key or a frontend's; revoking a revoked key again changes nothing."""
        known: dict[uuid.UUID, bool] = {}
        event: AnyEvent
        if cmd.user_id is not None:
            user = self.users.get(cmd.user_id)
            known = user.keys if user is not None else {}
            stream_type, stream_id, version = StreamType.USER, cmd.user_id, user.version if user is not None else 0
            event = ApiKeyRevoked(key_id=cmd.key_id, revoked_by=cmd.by, reason=cmd.reason)
        elif cmd.frontend is not None:
            stream_id = frontend_stream_id(cmd.frontend, cmd.bot_id)
            frontend = self.frontends.get(stream_id) or FrontendView()
            known, stream_type, version = frontend.keys, StreamType.FRONTEND, frontend.version
            event = FrontendKeyRevoked(key_id=cmd.key_id, revoked_by=cmd.by, reason=cmd.reason)
        if cmd.key_id not in known:  # someone else's key is indistinguishable from none
            self.out.refuse(reply_to, Refused(code=RefusalCode.KEY_NOT_FOUND, detail=f"no key {cmd.key_id}"))
            return
        if known[cmd.key_id]:
            self.out.emit(stream_type, stream_id, version + 1, event, cause)
        self.out.reply(reply_to, Decision(ok=True))
