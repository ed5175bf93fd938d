"""A fake Discord for the real discord.py client: REST under `/api/v10` and the gateway websocket.

It speaks the protocols as discord.py uses them, so the library stays real and only its two base
addresses change (`discord.http.Route.BASE` and `DiscordWebSocket.DEFAULT_GATEWAY`):

- REST answers carry `Content-Type: application/json` exactly (discord.py parses JSON only then) and
  the rate-limit headers; an injected 429 has Discord's body (`retry_after`, `global`) and headers
  (`Retry-After`, `X-RateLimit-*`, and `Via`, without which discord.py takes a 429 for a Cloudflare ban
  and gives up).
- Interactions follow Discord's rules: the first callback must come within 3 seconds and only once
  (`10062 Unknown interaction`, `40060 already acknowledged`); a deferred reply (type 5) shows a
  loading message that the first follow-up replaces; the interaction token works for 15 minutes
  (`token_lifetime_s`), after which its webhook answers `50027 Invalid Webhook Token`.
- The gateway sends HELLO, answers heartbeats with ACKs, READY after IDENTIFY (with
  `resume_gateway_url`, the session id and the application), replays what a session missed on
  RESUME, and compresses as the URL asks (`zlib-stream`: one zlib stream, each message ended by a
  Z_SYNC_FLUSH; `zstd-stream` when zstandard is installed). `drop()` kills the socket without a close
  frame, as a dying server does.

A test injects slash commands (`command`) and button clicks (`click`) and reads, per channel, what the
users saw (`channel(id)`): each message, its edits, its buttons and its attachments.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import BodyPartReader, WSMsgType, web

try:  # discord.py asks for zstd-stream when zstandard is importable; the fake can then speak it too
    import zstandard
except ImportError:  # pragma: no cover - depends on the environment
    zstandard = None

MiB = 1024 * 1024
LOADING = 1 << 7  # message flag: "<bot> is thinking..."
EPHEMERAL = 1 << 6
HEARTBEAT_INTERVAL_MS = 41250

DISCORD_EPOCH_MS = 1_420_070_400_000
_increment = itertools.count()


def snowflake() -> str:
    """An id as Discord makes them: milliseconds since Discord's epoch, then a counter (so a client
    reads the creation time from the id, as discord.py's `created_at` does)."""
    ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
    return str((ms << 22) | (next(_increment) & 0xFFF))


class DiscordError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Attachment:
    id: str
    filename: str
    data: bytes
    content_type: str | None


@dataclass
class SeenMessage:
    """A message as the channel's users see it now, and every text it showed before."""

    id: str
    channel_id: str
    author_id: str
    webhook_id: str | None
    content: str = ""
    flags: int = 0
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    history: list[str] = field(default_factory=list)  # its text at each visible change, oldest first
    edits: int = 0
    identical_edits: int = 0  # edits that changed nothing a user could see

    @property
    def loading(self) -> bool:
        return bool(self.flags & LOADING)

    def buttons(self) -> list[dict[str, Any]]:
        return [c for row in self.components for c in row.get("components", []) if c.get("type") == 2]


@dataclass
class Channel:
    id: str
    guild_id: str
    messages: list[SeenMessage] = field(default_factory=list)
    forbidden: bool = False  # the bot may not post here (50001 Missing Access)


@dataclass
class Interaction:
    id: str
    token: str
    type: int
    channel_id: str
    user_id: str
    created: float
    payload: dict[str, Any]
    response_type: int | None = None
    original: SeenMessage | None = None  # the reply (deferred or not), once answered
    message: SeenMessage | None = None  # for a button click: the message it is on
    followups: list[SeenMessage] = field(default_factory=list)


@dataclass
class RateLimit:
    method: str
    path_prefix: str
    retry_after: float
    remaining: int  # how many requests still get the 429
    is_global: bool = False


@dataclass
class Session:
    id: str
    seq: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)  # dispatches, for a RESUME to replay
    socket: web.WebSocketResponse | None = None
    transport: asyncio.BaseTransport | None = None
    send: Callable[[dict[str, Any]], Any] | None = None


class FakeDiscord:
    """Discord's REST API and gateway on one local port, for one bot application (and any more that
    `add_application` puts on the same port: each its own token, id, commands and sessions)."""

    def __init__(self, token: str = "fake-bot-token", *, token_lifetime_s: float = 15 * 60) -> None:
        self.token = token
        self.application_id = snowflake()
        self.bot_user = {
            "id": self.application_id,
            "username": "tessera",
            "discriminator": "0000",
            "global_name": None,
            "avatar": None,
            "bot": True,
            "flags": 0,
            "mfa_enabled": False,
            "verified": True,
        }
        self.guild_id = snowflake()
        self.token_lifetime_s = token_lifetime_s
        self.commands: list[dict[str, Any]] = []
        self.channels: dict[str, Channel] = {}
        self.interactions: dict[str, Interaction] = {}
        self.sessions: dict[str, Session] = {}
        self.identified = 0
        self.resumed = 0
        self.compressions: list[str | None] = []
        self.requests: list[tuple[str, str]] = []
        self._limits: list[RateLimit] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.applications: dict[str, FakeDiscord] = {}  # by token: more bots served on this port

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> FakeDiscord:
        app = web.Application(client_max_size=64 * MiB, middlewares=[self._errors])
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/resume", self._gateway)
        self._rest_routes(app.router)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        for other in self.applications.values():
            other.port = self.port
        return self

    def add_application(self, token: str) -> FakeDiscord:
        """Another bot application served on this fake's port (Discord bots in one process share
        discord.py's addresses): REST by its token, interaction id or application id, the gateway
        by the token its IDENTIFY or RESUME carries. Drive and read it as its own fake."""
        other = FakeDiscord(token, token_lifetime_s=self.token_lifetime_s)
        other.port = self.port
        self.applications[token] = other
        return other

    def _application_for(self, request: web.Request) -> FakeDiscord:
        token = request.headers.get("Authorization", "").removeprefix("Bot ")
        info = request.match_info
        for other in self.applications.values():
            if token == other.token or info.get("app") == other.application_id or info.get("id") in other.interactions:
                return other
        return self

    async def close(self) -> None:
        for session in [s for app in (self, *self.applications.values()) for s in app.sessions.values()]:
            if session.transport is not None:
                session.transport.abort()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def rest_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # -- what a test does --------------------------------------------------------------------
    def channel(self, channel_id: str) -> Channel:
        if channel_id not in self.channels:
            self.channels[channel_id] = Channel(id=channel_id, guild_id=self.guild_id)
        return self.channels[channel_id]

    def rate_limit(
        self, method: str, path_prefix: str, retry_after: float, *, times: int = 1, is_global: bool = False
    ) -> None:
        """Answer the next `times` requests whose path starts with `path_prefix` with a 429."""
        self._limits.append(RateLimit(method, path_prefix, retry_after, times, is_global))

    async def command(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        user_id: str = "4242",
        channel_id: str = "700",
        attachment_size_limit: int = 10 * MiB,
    ) -> Interaction:
        """A user runs `/name` with options: an INTERACTION_CREATE of type 2 to the bot."""
        registered = next((c for c in self.commands if c["name"] == name), None)
        if registered is None:
            raise AssertionError(f"/{name} is not a registered command ({[c['name'] for c in self.commands]})")
        kinds = {o["name"]: o["type"] for o in registered.get("options", [])}
        for key in options or {}:
            if key not in kinds:
                raise AssertionError(f"/{name} has no option {key!r}")
        data = {
            "id": registered["id"],
            "name": name,
            "type": 1,
            "options": [{"name": k, "type": kinds[k], "value": v} for k, v in (options or {}).items()],
        }
        return await self._interact(2, data, user_id, channel_id, attachment_size_limit)

    async def click(self, message: SeenMessage, custom_id: str, *, user_id: str = "4242") -> Interaction:
        """A user presses the button `custom_id` under `message`: an INTERACTION_CREATE of type 3."""
        if custom_id not in [b.get("custom_id") for b in message.buttons()]:
            raise AssertionError(f"no button {custom_id!r} under message {message.id}")
        data = {"custom_id": custom_id, "component_type": 2}
        interaction = await self._interact(3, data, user_id, message.channel_id, 10 * MiB, message=message)
        return interaction

    async def drop(self) -> None:
        """Kill every gateway socket without a close frame, as a crashed server would."""
        for session in self.sessions.values():
            if session.transport is not None:
                session.transport.abort()
                session.transport = session.socket = session.send = None

    async def wait_for(self, predicate: Callable[[], object], timeout: float = 20) -> None:
        """Wait until `predicate()` holds; checked after every change the bot makes, and every 0.1 s
        (for a predicate that also reads things outside the fake)."""
        # A deadline of our own, not asyncio.timeout around the loop: on Python 3.11 the inner wait_for
        # can turn the outer timeout's cancellation into a TimeoutError, which the loop would swallow
        # and then wait forever (one CI run hung here until pytest-timeout).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._changed:
            while not predicate():
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError(f"the fake Discord saw nothing that satisfies the test within {timeout} s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(left, 0.1))

    def connected(self) -> bool:
        return any(s.socket is not None for s in self.sessions.values())

    async def _changed_now(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- interactions ------------------------------------------------------------------------
    async def _interact(
        self,
        kind: int,
        data: dict[str, Any],
        user_id: str,
        channel_id: str,
        size_limit: int,
        message: SeenMessage | None = None,
    ) -> Interaction:
        channel = self.channel(channel_id)
        interaction_id, token = snowflake(), f"aW50ZXJhY3Rpb246{snowflake()}"
        user = {"id": user_id, "username": f"user{user_id}", "discriminator": "0", "global_name": None, "avatar": None}
        payload: dict[str, Any] = {
            "id": interaction_id,
            "application_id": self.application_id,
            "type": kind,
            "data": data,
            "guild_id": self.guild_id,
            "channel_id": channel_id,
            "channel": {
                "id": channel_id,
                "type": 0,
                "guild_id": self.guild_id,
                "name": f"channel-{channel_id}",
                "position": 0,
                "permission_overwrites": [],
                "nsfw": False,
                "parent_id": None,
                "topic": None,
                "rate_limit_per_user": 0,
                "last_message_id": None,
                "flags": 0,
            },
            "member": {
                "user": user,
                "roles": [],
                "joined_at": "2024-01-01T00:00:00+00:00",
                "deaf": False,
                "mute": False,
                "flags": 0,
                "pending": False,
                "permissions": "2248473465835073",
            },
            "token": token,
            "version": 1,
            "app_permissions": "2248473465835073",
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": self.guild_id},
            "context": 0,
            "attachment_size_limit": size_limit,
        }
        if message is not None:
            payload["message"] = self._message_json(message)
        interaction = Interaction(
            id=interaction_id,
            token=token,
            type=kind,
            channel_id=channel.id,
            user_id=user_id,
            created=time.monotonic(),
            payload=payload,
            message=message,
        )
        self.interactions[interaction_id] = interaction
        await self._dispatch("INTERACTION_CREATE", payload)
        return interaction

    def _by_token(self, token: str) -> Interaction:
        for interaction in self.interactions.values():
            if interaction.token == token:
                if time.monotonic() - interaction.created > self.token_lifetime_s:
                    raise DiscordError(401, 50027, "Invalid Webhook Token")
                return interaction
        raise DiscordError(404, 10015, "Unknown Webhook")

    def _message_json(self, m: SeenMessage) -> dict[str, Any]:
        author = dict(self.bot_user)
        return {
            "id": m.id,
            "type": 0,
            "channel_id": m.channel_id,
            "guild_id": self.guild_id,
            "author": author,
            "content": m.content,
            "timestamp": datetime.now(UTC).isoformat(),
            "edited_timestamp": datetime.now(UTC).isoformat() if m.edits else None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [
                {
                    "id": str(i),
                    "filename": a.filename,
                    "size": len(a.data),
                    "url": f"http://127.0.0.1:{self.port}/attachments/{m.id}/{a.filename}",
                    "proxy_url": f"http://127.0.0.1:{self.port}/attachments/{m.id}/{a.filename}",
                    "content_type": a.content_type,
                }
                for i, a in enumerate(m.attachments)
            ],
            "embeds": [],
            "pinned": False,
            "flags": m.flags,
            "components": m.components,
            "webhook_id": m.webhook_id,
            "application_id": self.application_id if m.webhook_id else None,
        }

    # -- gateway -----------------------------------------------------------------------------
    async def _dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a dispatch to the bot's session; kept so a RESUME after a drop replays it."""
        session = next(iter(self.sessions.values()), None)
        if session is None:
            raise AssertionError("the bot has no gateway session")
        session.seq += 1
        message = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.sent.append(message)
        if session.send is not None:
            with contextlib.suppress(ConnectionError):
                await session.send(message)

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        compress = request.query.get("compress")
        self.compressions.append(compress)
        ws = web.WebSocketResponse(compress=False, autoping=True)
        await ws.prepare(request)
        send = _sender(ws, compress)
        await send({"op": 10, "s": None, "t": None, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS}})
        session: Session | None = None
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                break
            payload = json.loads(msg.data)
            op = payload.get("op")
            if op == 1:
                await send({"op": 11, "s": None, "t": None, "d": None})
            elif op in (2, 6):
                app = self.applications.get(str((payload.get("d") or {}).get("token")), self)
                handle = app._identify if op == 2 else app._resume
                session = await handle(payload["d"], ws, request, send)
        if session is not None and session.socket is ws:
            session.socket = session.transport = session.send = None
        return ws

    async def _identify(
        self, d: dict[str, Any], ws: web.WebSocketResponse, request: web.Request, send: Callable[..., Any]
    ) -> Session | None:
        if d.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        self.identified += 1
        self.sessions.clear()  # one bot, one session: a new IDENTIFY starts afresh
        session = Session(id=snowflake(), socket=ws, transport=request.transport, send=send)
        self.sessions[session.id] = session
        ready = {
            "v": 10,
            "user": self.bot_user,
            "guilds": [],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": f"ws://127.0.0.1:{self.port}/resume",
            "application": {"id": self.application_id, "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
        await self._dispatch("READY", ready)
        await self._changed_now()
        return session

    async def _resume(
        self, d: dict[str, Any], ws: web.WebSocketResponse, request: web.Request, send: Callable[..., Any]
    ) -> Session | None:
        session = self.sessions.get(d.get("session_id") or "")
        if session is None or d.get("token") != self.token:
            await send({"op": 9, "s": None, "t": None, "d": False})
            return None
        self.resumed += 1
        session.socket, session.transport, session.send = ws, request.transport, send
        for message in session.sent:
            if message["s"] > (d.get("seq") or 0):
                await send(message)
        await self._dispatch("RESUMED", {})
        await self._changed_now()
        return session

    # -- REST --------------------------------------------------------------------------------
    def _rest_routes(self, router: web.UrlDispatcher) -> None:
        api = "/api/v10"
        router.add_get(f"{api}/users/@me", self._me)
        router.add_get(f"{api}/oauth2/applications/@me", self._application)
        router.add_get(f"{api}/gateway/bot", self._gateway_bot)
        router.add_get(f"{api}/gateway", self._gateway_bot)
        router.add_put(f"{api}/applications/{{app}}/commands", self._overwrite_commands)
        router.add_get(f"{api}/applications/{{app}}/commands", self._list_commands)
        router.add_post(f"{api}/interactions/{{id}}/{{token}}/callback", self._callback)
        router.add_post(f"{api}/webhooks/{{app}}/{{token}}", self._followup)
        router.add_route("*", f"{api}/webhooks/{{app}}/{{token}}/messages/{{message}}", self._webhook_message)
        router.add_post(f"{api}/channels/{{channel}}/messages", self._channel_post)
        router.add_patch(f"{api}/channels/{{channel}}/messages/{{message}}", self._channel_edit)

    def _authorized(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bot {self.token}":
            raise DiscordError(401, 0, "401: Unauthorized")

    async def _me(self, request: web.Request) -> web.Response:
        self._authorized(request)
        return discord_json(self.bot_user)

    async def _application(self, request: web.Request) -> web.Response:
        self._authorized(request)
        return discord_json(
            {
                "id": self.application_id,
                "name": "Tessera",
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self.bot_user,
                "verify_key": "0" * 64,
                "flags": 0,
                "summary": "",
                "team": None,
            }
        )

    async def _gateway_bot(self, request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 999, "reset_after": 14400000, "max_concurrency": 1}
        return discord_json({"url": self.gateway_url, "shards": 1, "session_start_limit": limit})

    async def _overwrite_commands(self, request: web.Request) -> web.Response:
        self._authorized(request)
        if request.match_info["app"] != self.application_id:
            raise DiscordError(403, 50001, "Missing Access")
        commands = await request.json()
        self.commands = [
            {"id": snowflake(), "application_id": self.application_id, "version": snowflake(), "type": 1, **c}
            for c in commands
        ]
        return discord_json(self.commands)

    async def _list_commands(self, request: web.Request) -> web.Response:
        self._authorized(request)
        return discord_json(self.commands)

    async def _callback(self, request: web.Request) -> web.Response:
        interaction = self.interactions.get(request.match_info["id"])
        if interaction is None or interaction.token != request.match_info["token"]:
            raise DiscordError(404, 10062, "Unknown interaction")
        if interaction.response_type is not None:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        if time.monotonic() - interaction.created > 3.0:
            raise DiscordError(404, 10062, "Unknown interaction")
        body, files = await _read_body(request)
        kind, data = body["type"], body.get("data") or {}
        message: SeenMessage | None = None
        if kind in (4, 5):
            message = self._new_message(interaction.channel_id, data, files, webhook=True)
            if kind == 5:
                message.flags |= LOADING
            interaction.original = message
        elif kind == 7 and interaction.message is not None:
            message = interaction.message
            self._edit(message, data, files)
        elif kind != 6 or interaction.type != 3:
            raise DiscordError(400, 50035, f"Invalid Form Body: callback type {kind}")
        interaction.response_type = kind
        if request.query.get("with_response") not in ("1", "true"):
            return web.Response(status=204)
        answer: dict[str, Any] = {
            "interaction": {
                "id": interaction.id,
                "type": interaction.type,
                "response_message_id": message.id if message else None,
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(message and message.flags & EPHEMERAL),
            }
        }
        if message is not None:
            answer["resource"] = {"type": kind, "message": self._message_json(message)}
        return discord_json(answer)

    async def _followup(self, request: web.Request) -> web.StreamResponse:
        interaction = self._by_token(request.match_info["token"])
        if interaction.response_type is None:
            raise DiscordError(404, 10015, "Unknown Webhook")
        body, files = await _read_body(request)
        original = interaction.original
        if interaction.response_type == 5 and original is not None and original.loading and not interaction.followups:
            message = original  # the first follow-up of a deferred reply replaces its "thinking..."
            self._edit(message, body, files)
        else:
            message = self._new_message(interaction.channel_id, body, files, webhook=True)
        interaction.followups.append(message)
        if request.query.get("wait") not in ("1", "true", "True"):
            return web.Response(status=204)
        return discord_json(self._message_json(message))

    async def _webhook_message(self, request: web.Request) -> web.StreamResponse:
        interaction = self._by_token(request.match_info["token"])
        wanted = request.match_info["message"]
        message = interaction.original if wanted == "@original" else None
        for candidate in [interaction.original, *interaction.followups]:
            if candidate is not None and candidate.id == wanted:
                message = candidate
        if message is None or message not in self.channel(message.channel_id).messages:
            raise DiscordError(404, 10008, "Unknown Message")
        if request.method == "PATCH":
            body, files = await _read_body(request)
            self._edit(message, body, files)
        elif request.method == "DELETE":
            self.channel(message.channel_id).messages.remove(message)
            return web.Response(status=204)
        return discord_json(self._message_json(message))

    async def _channel_post(self, request: web.Request) -> web.Response:
        self._authorized(request)
        channel = self.channel(request.match_info["channel"])
        if channel.forbidden:
            raise DiscordError(403, 50001, "Missing Access")
        body, files = await _read_body(request)
        message = self._new_message(channel.id, body, files, webhook=False)
        return discord_json(self._message_json(message))

    async def _channel_edit(self, request: web.Request) -> web.Response:
        self._authorized(request)
        channel = self.channel(request.match_info["channel"])
        message = next((m for m in channel.messages if m.id == request.match_info["message"]), None)
        if message is None:
            raise DiscordError(404, 10008, "Unknown Message")
        if message.webhook_id is not None:
            raise DiscordError(403, 50005, "Cannot edit a message authored by another user")
        body, files = await _read_body(request)
        self._edit(message, body, files)
        return discord_json(self._message_json(message))

    def _new_message(
        self, channel_id: str, body: dict[str, Any], files: list[Attachment], *, webhook: bool
    ) -> SeenMessage:
        message = SeenMessage(
            id=snowflake(),
            channel_id=channel_id,
            author_id=self.application_id,
            webhook_id=self.application_id if webhook else None,
            content=body.get("content") or "",
            flags=int(body.get("flags") or 0) & EPHEMERAL,
            components=body.get("components") or [],
            attachments=_attached(body, files, []),
        )
        message.history.append(message.content)
        self.channel(channel_id).messages.append(message)
        return message

    def _edit(self, message: SeenMessage, body: dict[str, Any], files: list[Attachment]) -> None:
        before = _visible(message)
        if "content" in body:
            message.content = body["content"] or ""
        if "components" in body:
            message.components = body["components"] or []
        message.attachments = _attached(body, files, message.attachments)
        message.flags &= ~LOADING
        message.edits += 1
        if _visible(message) == before:
            message.identical_edits += 1
        else:
            message.history.append(message.content)

    # -- errors and rate limits --------------------------------------------------------------
    @web.middleware
    async def _errors(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            response: web.StreamResponse = await handler(request)
            return response
        application = self._application_for(request)
        if application is not self:  # another bot's: its own handler, limits and log
            return await application._errors(request, getattr(application, handler.__name__))
        self.requests.append((request.method, request.path))
        for limit in self._limits:
            if limit.remaining and request.method == limit.method and request.path.startswith(limit.path_prefix):
                limit.remaining -= 1
                return _too_many(limit)
        try:
            response = await handler(request)
        except DiscordError as exc:
            return discord_json({"message": exc.message, "code": exc.code}, status=exc.status)
        await self._changed_now()
        return response


def discord_json(body: object, status: int = 200) -> web.Response:
    """A JSON answer as Discord sends it: the content type exactly `application/json`."""
    headers = {
        "X-RateLimit-Limit": "5",
        "X-RateLimit-Remaining": "4",
        "X-RateLimit-Reset": f"{time.time() + 1:.3f}",
        "X-RateLimit-Reset-After": "1.000",
        "X-RateLimit-Bucket": "fakebucket",
        "Via": "1.1 google",
    }
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json", headers=headers)


def _too_many(limit: RateLimit) -> web.Response:
    body = {"message": "You are being rate limited.", "retry_after": limit.retry_after, "global": limit.is_global}
    headers = {
        "Retry-After": str(max(1, round(limit.retry_after))),
        "X-RateLimit-Limit": "5",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": f"{time.time() + limit.retry_after:.3f}",
        "X-RateLimit-Reset-After": f"{limit.retry_after:.3f}",
        "X-RateLimit-Bucket": "fakebucket",
        "X-RateLimit-Scope": "global" if limit.is_global else "user",
        "Via": "1.1 google",
    }
    if limit.is_global:
        headers["X-RateLimit-Global"] = "true"
    return web.Response(status=429, body=json.dumps(body).encode(), content_type="application/json", headers=headers)


def _sender(ws: web.WebSocketResponse, compress: str | None) -> Callable[[dict[str, Any]], Any]:
    """How this connection sends a gateway message: plain text, or through its one compression stream."""
    if compress == "zlib-stream":
        zctx = zlib.compressobj()

        async def send_zlib(message: dict[str, Any]) -> None:
            data = json.dumps(message).encode()
            await ws.send_bytes(zctx.compress(data) + zctx.flush(zlib.Z_SYNC_FLUSH))

        return send_zlib
    if compress == "zstd-stream":
        if zstandard is None:
            raise AssertionError("the client asked for zstd-stream but zstandard is not installed here")
        cctx = zstandard.ZstdCompressor().compressobj()

        async def send_zstd(message: dict[str, Any]) -> None:
            data = json.dumps(message).encode()
            await ws.send_bytes(cctx.compress(data) + cctx.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))

        return send_zstd

    async def send_text(message: dict[str, Any]) -> None:
        await ws.send_str(json.dumps(message))

    return send_text


async def _read_body(request: web.Request) -> tuple[dict[str, Any], list[Attachment]]:
    """A JSON body, or multipart with `payload_json` and `files[n]` as discord.py sends attachments."""
    if not request.content_type.startswith("multipart/"):
        if not request.can_read_body:
            return {}, []
        if request.content_type != "application/json":
            raise DiscordError(400, 50109, "The request body contains invalid JSON.")
        return await request.json(), []
    payload: dict[str, Any] = {}
    files: list[Attachment] = []
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "payload_json":
            payload = json.loads(await part.text())
        elif part.name and part.name.startswith("files["):
            index = part.name[len("files[") : -1]
            content_type = part.headers.get("Content-Type")
            files.append(Attachment(index, part.filename or f"file{index}", bytes(await part.read()), content_type))
    return payload, files


def _attached(body: dict[str, Any], files: list[Attachment], existing: list[Attachment]) -> list[Attachment]:
    """The attachments after a create or edit: `attachments` lists what stays (by id) and names new files
    (by their index); without it, what was there stays and new files join it."""
    uploaded = {f.id: f for f in files}
    if "attachments" not in body:
        return [*existing, *(Attachment(snowflake(), f.filename, f.data, f.content_type) for f in files)]
    kept = {a.id: a for a in existing}
    result = []
    for entry in body.get("attachments") or []:
        key = str(entry.get("id"))
        if key in uploaded:
            new = uploaded[key]
            result.append(Attachment(snowflake(), entry.get("filename") or new.filename, new.data, new.content_type))
        elif key in kept:
            result.append(kept[key])
    return result


def _visible(message: SeenMessage) -> object:
    attachments = [(a.filename, a.data) for a in message.attachments]
    return message.content, json.dumps(message.components, sort_keys=True), attachments, message.loading
