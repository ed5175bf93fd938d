"""Dependency aliases for the routes: the services and the authenticated principal."""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Annotated

import asyncpg
from cachetools import TTLCache
from fastapi import Depends, Header, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from nats.aio.client import Client as NATS

from base.catalog import Catalog
from base.config import Settings
from base.keys import FRONTEND_KEY_PREFIX, PLATFORMS, USER_KEY_PREFIX, hash_key
from events.types import user_stream_id
from gateway.auth import Principal
from gateway.errors import Problem
from gateway.fleet import Fleet
from gateway.links import LinkSigner
from gateway.wakers import Wakers
from gateway.web import accounts
from projector import queries
from streams.commands import CommandBus


@dataclass
class Services:
    settings: Settings
    pool: asyncpg.Pool
    nc: NATS
    bus: CommandBus
    fleet: Fleet
    catalog: Catalog = field(init=False)  # loaded from settings.catalog_file
    links: LinkSigner = field(init=False)  # signs and checks artifact links
    keys: TTLCache[str, KeyHolder] = field(init=False)
    # Keys revoked lately, by id: refused even while the read model does not show the revocation yet.
    revoked: TTLCache[uuid.UUID, bool] = field(init=False)
    wakers: Wakers = field(default_factory=Wakers)  # the user-wide event streams open here

    def __post_init__(self) -> None:
        self.catalog = Catalog.load(self.settings.catalog_file)
        self.links = LinkSigner(self.settings.url_signing_key, self.settings.signed_url_ttl_s)
        # Valid keys only: an unknown key is looked up every time, so a new key works at once.
        self.keys = TTLCache(maxsize=100_000, ttl=self.settings.key_cache_s)
        self.revoked = TTLCache(maxsize=100_000, ttl=600)

    def key_revoked(self, key_id: uuid.UUID) -> None:
        """A key was revoked (the events stream said so): it stops working here at once."""
        self.revoked[key_id] = True
        for digest in [d for d, holder in self.keys.items() if holder.key_id == key_id]:
            self.keys.pop(digest, None)


async def _services(request: Request) -> Services:  # async: a sync dependency costs a thread hop
    services: Services = request.app.state.services  # Starlette's app state is untyped
    return services


_NUMERIC_IDS = ("telegram", "discord")  # their user ids are integers (Discord's snowflakes too)
_WEB_ID = re.compile(r"[A-Za-z0-9_.@+-]{1,100}")


def parse_user_ref(user_ref: str, frontend: str) -> tuple[str, str]:
    """(platform, user id) of a `platform:id` reference, in its one canonical spelling: Telegram and
    Discord ids are decimal integers without sign or leading zeros, web ids a plain token; anything
    else (spaces, other characters) is refused, so one person is never two users."""
    platform, sep, platform_user_id = user_ref.partition(":")
    if (
        platform in _NUMERIC_IDS
        and platform_user_id.isascii()
        and platform_user_id.isdigit()
        and len(platform_user_id) <= 20
    ):
        platform_user_id = str(int(platform_user_id))
    elif platform != "web" or not _WEB_ID.fullmatch(platform_user_id):
        platform_user_id = ""
    if not sep or platform not in PLATFORMS or not platform_user_id:
        raise Problem(
            422,
            "INVALID_USER_REF",
            "user_ref must look like 'telegram:123456' "
            f"(platform one of {', '.join(PLATFORMS)}; Telegram and Discord ids are numbers)",
        )
    if platform != frontend:
        raise Problem(403, "USER_REF_NOT_ALLOWED", f"a {frontend} frontend key cannot act for {platform} users")
    return platform, platform_user_id


@dataclass(frozen=True)
class KeyHolder:
    """A valid key: a user's own (`user_id`), or a frontend's (`frontend`, `bot_id`). A website
    session holds like a user's key, as frontend `web` with the account's `user_ref`."""

    user_id: uuid.UUID | None
    frontend: str
    bot_id: str | None
    key_id: uuid.UUID | None = None
    user_ref: str | None = None

    def acting_for(self, user_ref: str | None) -> Principal:
        if self.user_id is not None:
            return Principal(user_id=self.user_id, frontend=self.frontend, bot_id=None, user_ref=self.user_ref)
        if not user_ref:
            raise Problem(
                422,
                "USER_REF_REQUIRED",
                "a frontend key must name the user it acts for (user_ref in the body, or the Tessera-User-Ref header)",
            )
        platform, platform_user_id = parse_user_ref(user_ref, self.frontend)
        return Principal(
            user_id=user_stream_id(platform, platform_user_id),
            frontend=self.frontend,
            bot_id=self.bot_id,
            user_ref=f"{platform}:{platform_user_id}",
        )

    def check_frontend_fields(
        self, frontend: str | None, bot_id: str | None, reply_context: object, user_ref: str | None
    ) -> None:
        """Where a job's completion goes is the frontend key's to say: a user key may not name a
        frontend, a bot, a reply context or a user; a frontend key names only its own bot."""
        if self.user_id is not None:
            named = [
                name
                for name, value in (
                    ("frontend", frontend not in (None, "api")),
                    ("bot_id", bot_id),
                    ("reply_context", reply_context),
                    ("user_ref", user_ref),
                )
                if value
            ]
            if named:
                raise Problem(
                    403,
                    "FRONTEND_FIELDS_FORBIDDEN",
                    f"{', '.join(named)} may be sent only with a "
                    "frontend key; a user's API key submits for its own user",
                )
            return
        if frontend is not None and frontend != self.frontend:
            raise Problem(403, "WRONG_FRONTEND", f"this key belongs to the {self.frontend} frontend")
        if bot_id is not None and bot_id != self.bot_id:
            raise Problem(403, "WRONG_BOT", f"this key belongs to {self.bot_id or 'no particular bot'}, not {bot_id}")


async def key_holder(services: Services, authorization: str | None) -> KeyHolder:
    """Check the bearer key; raises 401 for a missing or unknown one."""
    scheme, _, key = (authorization or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Problem(
            401, "UNAUTHENTICATED", "send 'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"}
        )
    digest = hash_key(key)
    holder = services.keys.get(digest)
    if holder is not None:
        return holder
    async with services.pool.acquire() as conn:
        if key.startswith(USER_KEY_PREFIX):
            row = await queries.api_key(conn, digest)
            if row is not None:
                holder = KeyHolder(user_id=row["user_id"], frontend="api", bot_id=None, key_id=row["key_id"])
        elif key.startswith(FRONTEND_KEY_PREFIX):
            row = await queries.frontend_key(conn, digest)
            if row is not None:
                holder = KeyHolder(user_id=None, frontend=row["frontend"], bot_id=row["bot_id"], key_id=row["key_id"])
    if holder is not None and holder.key_id not in services.revoked:
        services.keys[digest] = holder
        return holder
    raise Problem(401, "INVALID_API_KEY", "the API key is not valid", headers={"WWW-Authenticate": "Bearer"})


SESSION_COOKIE = "tessera_session"
CSRF_HEADER = "x-csrf-token"
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


async def session_of(services: Services, request: Request) -> accounts.Session | None:
    """The website session the request's cookie names, if it is live."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    async with services.pool.acquire() as conn:
        return await accounts.session(conn, token)


async def holder_of(services: Services, request: Request) -> KeyHolder:
    """Who the request acts for: a bearer key, or else a website session. A session's request that
    changes anything must carry the session's CSRF token in `X-CSRF-Token` (the pages send it)."""
    authorization = request.headers.get("authorization")
    if authorization is None and request.cookies.get(SESSION_COOKIE):
        found = await session_of(services, request)
        if found is None:
            raise Problem(401, "SESSION_EXPIRED", "the session has ended; log in again")
        if request.method not in _SAFE_METHODS and not secrets.compare_digest(
            request.headers.get(CSRF_HEADER, ""), found.csrf_token
        ):
            raise Problem(403, "CSRF_TOKEN_INVALID", "send the page's CSRF token in X-CSRF-Token")
        return KeyHolder(user_id=found.user_id, frontend="web", bot_id=None, user_ref=found.user_ref)
    return await key_holder(services, authorization)


# Declared for the OpenAPI document (securitySchemes, so /docs can send a key); the checks are
# holder_of's, which also reads them from the request.
_bearer = HTTPBearer(auto_error=False, description="A user's API key (tsk_…) or a frontend key (tfk_…)")
_cookie = APIKeyCookie(name=SESSION_COOKIE, auto_error=False, description="A website session")


async def _key_holder(
    request: Request,
    services: Annotated[Services, Depends(_services)],
    _key: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    _session: Annotated[str | None, Depends(_cookie)],
) -> KeyHolder:
    return await holder_of(services, request)


async def _principal(
    holder: Annotated[KeyHolder, Depends(_key_holder)],
    tessera_user_ref: Annotated[str | None, Header(description="With a frontend key: the user acted for")] = None,
) -> Principal:
    return holder.acting_for(tessera_user_ref)


ServicesDep = Annotated[Services, Depends(_services)]
CurrentPrincipal = Annotated[Principal, Depends(_principal)]
KeyHolderDep = Annotated[KeyHolder, Depends(_key_holder)]
