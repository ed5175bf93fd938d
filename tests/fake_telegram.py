"""A fake Telegram Bot API server, for python-telegram-bot pointed at it through `base_url`.

It answers as the real Bot API does, as python-telegram-bot's request layer reads it
(`telegram/request/_baserequest.py`): `POST /bot<token>/<method>` (GET works too) with parameters
in the query, a url-encoded or multipart form (how python-telegram-bot sends them: strings as they
are, everything else JSON-encoded) or a JSON body. Success is HTTP 200 `{"ok": true, "result": ...}`;
a failure is `{"ok": false, "error_code": N, "description": "..."}` with the same HTTP status, and
`parameters.retry_after` on a 429, which python-telegram-bot raises as `RetryAfter` (403 becomes
`Forbidden`, 400 `BadRequest`, 401/404 `InvalidToken`, 409 `Conflict`). What it copies:

- `getUpdates` long polling: updates are kept until a later call's `offset` confirms them (a
  negative offset keeps only the last ones); `timeout` holds the request until an update comes;
  `allowed_updates` is remembered and filters updates created after it; a second poller ends the
  first with 409 "Conflict: terminated by other getUpdates request; ...".
- Messages have per-chat ids; `reply_parameters` / `reply_to_message_id` must name a message of
  the chat ("message to be replied not found" otherwise, unless `allow_sending_without_reply`).
- `editMessageText` replaces the text and the inline keyboard (an edit without `reply_markup`
  removes the keyboard, as Telegram does); the same text and keyboard again is 400 "Bad Request:
  message is not modified: ...".
- Uploads are multipart: a photo at most 10 MB and a readable PNG/JPEG/WebP/GIF within Telegram's
  dimension rules, anything at most 50 MB (2000 MB for a `local` server, like `telegram-bot-api
  --local`); past that the front proxy answers 413 with an HTML page, as the real one does.
  The bytes are kept: tests read them and `getFile` + `/file/bot<token>/<path>` download them
  (20 MB at most unless `local`).
- A group takes at most 20 messages and edits a minute from a bot; more is 429 with the seconds
  until the window frees.
- On demand: a user who blocked the bot (403 "Forbidden: bot was blocked by the user"), a group
  that removed it (403 "Forbidden: bot was kicked from the group chat"), and any error for the
  next calls of a method (`fail`, `too_many_requests`).

Tests drive it as users do (`user_says`, `press`) and read what each chat shows (`messages`).
"""

from __future__ import annotations

import asyncio
import contextlib
import html.parser
import itertools
import json
import math
import secrets
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from tessera.embedded import free_port

T = TypeVar("T")
MB = 1024 * 1024
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are exactly the same "
    "as a current content and reply markup of the message"
)
CONFLICT = "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"
BLOCKED = "Forbidden: bot was blocked by the user"
DEFAULT_UPDATES = {"message", "edited_message", "callback_query", "channel_post", "my_chat_member"}


class ApiError(Exception):
    """An answer with `ok: false`."""

    def __init__(self, code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": False, "error_code": self.code, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


@dataclass
class StoredFile:
    file_id: str
    unique_id: str
    data: bytes
    name: str
    mime_type: str
    path: str
    width: int = 0
    height: int = 0


@dataclass
class Sent:
    """One message as the chat's members see it; `edits` holds its earlier texts, oldest first."""

    message_id: int
    chat: dict[str, Any]
    sender: dict[str, Any]
    date: int
    text: str | None = None
    caption: str | None = None
    kind: str = "text"  # text, photo, document or video
    file: StoredFile | None = None
    reply_to: Sent | None = None
    markup: dict[str, Any] | None = None
    edits: list[str] = field(default_factory=list)
    deleted: bool = False

    @property
    def from_bot(self) -> bool:
        return bool(self.sender.get("is_bot"))

    @property
    def buttons(self) -> list[tuple[str, str]]:
        """The inline keyboard as (label, callback data) pairs."""
        rows = (self.markup or {}).get("inline_keyboard", [])
        return [(b["text"], b.get("callback_data", b.get("url", ""))) for row in rows for b in row]

    def as_json(self, *, with_reply: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "message_id": self.message_id,
            "from": self.sender,
            "chat": self.chat,
            "date": self.date,
        }
        if self.text is not None:
            body["text"] = self.text
            if self.text.startswith("/"):
                length = len(self.text.split(maxsplit=1)[0])
                body["entities"] = [{"offset": 0, "length": length, "type": "bot_command"}]
        if self.caption is not None:
            body["caption"] = self.caption
        if self.edits:
            body["edit_date"] = int(time.time())
        if self.file is not None:
            body[self.kind] = _file_json(self.kind, self.file)
        if self.reply_to is not None and with_reply:
            body["reply_to_message"] = self.reply_to.as_json(with_reply=False)
        if self.markup:
            body["reply_markup"] = self.markup
        return body


def _file_json(kind: str, f: StoredFile) -> Any:
    base = {"file_id": f.file_id, "file_unique_id": f.unique_id, "file_size": len(f.data)}
    if kind == "photo":  # Telegram sends every size it made; this fake makes one
        return [{**base, "width": f.width, "height": f.height}]
    if kind == "video":
        return {**base, "width": f.width, "height": f.height, "duration": 1, "mime_type": f.mime_type}
    return {**base, "file_name": f.name, "mime_type": f.mime_type}


@dataclass
class Call:
    """One request the bot made, its parameters decoded and its answer's error code (0 when ok)."""

    token: str
    method: str
    params: dict[str, Any]
    error_code: int = 0
    at: float = field(default_factory=time.monotonic)


@dataclass
class BotAccount:
    token: str
    user: dict[str, Any]
    updates: list[dict[str, Any]] = field(default_factory=list)
    next_update_id: int = 0
    allowed_updates: set[str] = field(default_factory=lambda: set(DEFAULT_UPDATES))
    commands: list[dict[str, str]] = field(default_factory=list)
    poller: asyncio.Future[None] | None = None
    callback_queries: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Fault:
    method: str
    error: ApiError
    times: int
    chat_id: int | None


@dataclass
class Upload:
    filename: str | None
    content_type: str | None
    data: bytes


class Params:
    """A request's parameters however they came, read as the method's types want them."""

    def __init__(self, values: dict[str, Any], files: dict[str, Upload]) -> None:
        self.values = values
        self.files = files

    def get(self, name: str) -> Any:
        return self.values.get(name)

    def text(self, name: str) -> str | None:
        value = self.values.get(name)
        return None if value is None else str(value)

    def number(self, name: str, default: int | None = None) -> int | None:
        value = self.values.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ApiError(400, f"Bad Request: invalid {name} specified") from None

    def object(self, name: str) -> Any:
        value = self.values.get(name)
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ApiError(400, f"Bad Request: can't parse {name} JSON object") from None
        return value

    def flag(self, name: str) -> bool:
        value = self.values.get(name)
        return value in (True, "true", "True", "1", 1)


class _Html(html.parser.HTMLParser):
    """What Telegram shows of a text sent with parse_mode HTML; refuses tags it does not know."""

    ALLOWED = frozenset(
        {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre", "tg-spoiler", "span"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.ALLOWED:
            raise ApiError(400, f'Bad Request: can\'t parse entities: Unsupported start tag "{tag}"')

    def handle_data(self, data: str) -> None:
        self.out.append(data)


def _shown_text(text: str, parse_mode: str | None) -> str:
    if (parse_mode or "").upper() != "HTML":
        return text
    parser = _Html()
    parser.feed(text)
    parser.close()
    return "".join(parser.out)


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of a PNG, GIF, WebP or JPEG, read from its header."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        width, height = struct.unpack("<HH", data[6:10])
        return int(width), int(height)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return int(width) & 0x3FFF, int(height) & 0x3FFF
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return int(width), int(height)
        i += 2 + length
    return None


Method = Callable[["FakeTelegram", BotAccount, Params], Awaitable[Any]]


class FakeTelegram:
    """The Bot API's state: bots, chats, the messages in them, updates waiting for each bot."""

    def __init__(self, *, local: bool = False, group_limit_per_minute: int = 20) -> None:
        self.local = local
        self.group_limit_per_minute = group_limit_per_minute
        self.bots: dict[str, BotAccount] = {}
        self.chats: dict[int, dict[str, Any]] = {}
        self.users: dict[int, dict[str, Any]] = {}
        self.chat_messages: dict[int, list[Sent]] = {}
        self.files: dict[str, StoredFile] = {}
        self.calls: list[Call] = []
        self.blocked: set[int] = set()
        self.kicked: set[int] = set()
        self.faults: list[Fault] = []
        self._group_sends: dict[tuple[str, int], deque[float]] = {}
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self.app = Starlette(
            routes=[
                Route("/bot{token}/{method}", self._api, methods=["GET", "POST"]),
                Route("/file/bot{token}/{path:path}", self._download, methods=["GET"]),
            ]
        )

    # --- the test's side: accounts, users, chats ---------------------------------------------------

    def add_bot(self, username: str, token: str | None = None) -> str:
        """A bot, as BotFather makes one; returns its token."""
        bot_id = 7_000_000_000 + next(self._ids)
        token = token or f"{bot_id}:{secrets.token_urlsafe(26)}"
        user = {"id": int(token.split(":", 1)[0]), "is_bot": True, "first_name": username, "username": username}
        self.bots[token] = BotAccount(token=token, user=user, next_update_id=100_000_000 + next(self._ids) * 1000)
        return token

    def user(self, user_id: int, first_name: str = "Ada", username: str | None = None) -> dict[str, Any]:
        user = {"id": user_id, "is_bot": False, "first_name": first_name, "language_code": "en"}
        if username:
            user["username"] = username
        self.users[user_id] = user
        self.chats.setdefault(user_id, {"id": user_id, "type": "private", "first_name": first_name})
        return user

    def group(self, chat_id: int, title: str = "Tessera fans", kind: str = "group") -> dict[str, Any]:
        if chat_id >= 0:
            raise ValueError("a group's id is negative")
        chat = {"id": chat_id, "type": kind, "title": title}
        self.chats[chat_id] = chat
        return chat

    def block(self, user_id: int) -> None:
        """The user blocked the bot: everything sent to their private chat is refused with 403."""
        self.blocked.add(user_id)

    def kick(self, chat_id: int) -> None:
        """The group removed the bot."""
        self.kicked.add(chat_id)

    def fail(self, method: str, code: int, description: str, *, times: int = 1, chat_id: int | None = None) -> None:
        """The next `times` calls of `method` (to `chat_id` only, if given) answer this error."""
        self.faults.append(Fault(method, ApiError(code, description), times, chat_id))

    def too_many_requests(self, method: str, retry_after: int, *, times: int = 1, chat_id: int | None = None) -> None:
        error = ApiError(429, f"Too Many Requests: retry after {retry_after}", retry_after)
        self.faults.append(Fault(method, error, times, chat_id))

    # --- the test's side: acting as users --------------------------------------------------------

    def user_says(self, token: str, chat_id: int, text: str, *, user_id: int | None = None) -> Sent:
        """A user writes in a chat the bot is in; the bot receives it as a `message` update."""
        sender = self.users[user_id if user_id is not None else chat_id]
        message = self._append(chat_id, sender, text=text)
        self._queue(self.bots[token], "message", message.as_json())
        return message

    def press(self, token: str, message: Sent, data: str, *, user_id: int) -> str:
        """A user presses an inline button under the bot's `message`; returns the callback query's id."""
        if data not in {d for _, d in message.buttons}:
            raise AssertionError(f"message {message.message_id} has no button {data!r}: {message.buttons}")
        bot = self.bots[token]
        query_id = str(secrets.randbits(62))
        query = {
            "id": query_id,
            "from": self.users[user_id],
            "message": message.as_json(),
            "chat_instance": str(message.chat["id"] * 7919),
            "data": data,
        }
        bot.callback_queries[query_id] = {"answered": False, "answer": None}
        self._queue(bot, "callback_query", query)
        return query_id

    # --- the test's side: what users see ------------------------------------------------------

    def messages(self, chat_id: int, *, from_bot: bool | None = None) -> list[Sent]:
        """The chat's messages still there, oldest first."""
        return [
            m
            for m in self.chat_messages.get(chat_id, [])
            if not m.deleted and (from_bot is None or m.from_bot == from_bot)
        ]

    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    async def wait_for(self, probe: Callable[[], T | None], timeout: float = 20.0) -> T:
        """Wait until `probe()` returns something (it is asked again after every change)."""
        deadline = time.monotonic() + timeout
        while True:
            changed = self._changed
            result = probe()
            if result is not None and result is not False:
                return result
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"nothing came within {timeout} s; calls: {[c.method for c in self.calls][-20:]}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(left, 0.5))

    # --- internals --------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _queue(self, bot: BotAccount, kind: str, payload: dict[str, Any]) -> None:
        if kind in bot.allowed_updates:
            bot.next_update_id += 1
            bot.updates.append({"update_id": bot.next_update_id, kind: payload})
        self._notify()

    def _append(self, chat_id: int, sender: dict[str, Any], **values: Any) -> Sent:
        log = self.chat_messages.setdefault(chat_id, [])
        message = Sent(
            message_id=len(log) + 1, chat=self.chats[chat_id], sender=sender, date=int(time.time()), **values
        )
        log.append(message)
        self._notify()
        return message

    def _message(self, chat_id: int, message_id: int | None) -> Sent | None:
        log = self.chat_messages.get(chat_id, [])
        if message_id is None or not 1 <= message_id <= len(log) or log[message_id - 1].deleted:
            return None
        return log[message_id - 1]

    def _chat_for(self, bot: BotAccount, p: Params) -> int:
        """The chat a call is about, refused as Telegram refuses it."""
        chat_id = p.number("chat_id")
        if chat_id is None:
            raise ApiError(400, "Bad Request: chat_id is empty")
        if chat_id not in self.chats:
            raise ApiError(400, "Bad Request: chat not found")
        if chat_id in self.blocked:
            raise ApiError(403, BLOCKED)
        if chat_id in self.kicked:
            kind = "supergroup" if self.chats[chat_id]["type"] == "supergroup" else "group"
            raise ApiError(403, f"Forbidden: bot was kicked from the {kind} chat")
        return chat_id

    def _flood(self, bot: BotAccount, chat_id: int) -> None:
        if chat_id >= 0:
            return
        now = time.monotonic()
        sent = self._group_sends.setdefault((bot.token, chat_id), deque())
        while sent and now - sent[0] >= 60:
            sent.popleft()
        if len(sent) >= self.group_limit_per_minute:
            wait = max(1, math.ceil(60 - (now - sent[0])))
            raise ApiError(429, f"Too Many Requests: retry after {wait}", wait)
        sent.append(now)

    def _fault(self, method: str, p: Params) -> None:
        for fault in self.faults:
            if fault.method != method or fault.times <= 0:
                continue
            if fault.chat_id is not None and p.number("chat_id") != fault.chat_id:
                continue
            fault.times -= 1
            raise fault.error

    async def _params(self, request: Request) -> Params:
        values: dict[str, Any] = dict(request.query_params)
        files: dict[str, Upload] = {}
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            body = await request.body()
            if body:
                values.update(json.loads(body))
        elif content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            async with request.form(max_part_size=10 * MB) as form:
                for key, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        files[key] = Upload(value.filename, value.content_type, await value.read())
                    else:
                        values[key] = value
        return Params(values, files)

    async def _api(self, request: Request) -> Response:
        token, method = request.path_params["token"], request.path_params["method"]
        limit = (2000 if self.local else 50) * MB
        if int(request.headers.get("content-length") or 0) > limit:  # nginx in front refuses it unread
            return HTMLResponse(_TOO_LARGE, status_code=413)
        call = Call(token=token, method=method, params={})
        self.calls.append(call)
        try:
            if ":" not in token:
                raise ApiError(404, "Not Found")
            bot = self.bots.get(token)
            if bot is None:
                raise ApiError(401, "Unauthorized")
            handler = METHODS.get(method.lower())
            if handler is None:
                raise ApiError(404, "Not Found")
            p = await self._params(request)
            call.params = {**p.values, **{k: f"<file {v.filename}>" for k, v in p.files.items()}}
            self._fault(method, p)
            result = await handler(self, bot, p)
        except ApiError as exc:
            call.error_code = exc.code
            self._notify()
            return JSONResponse(exc.body(), status_code=exc.code)
        self._notify()
        return JSONResponse({"ok": True, "result": result})

    async def _download(self, request: Request) -> Response:
        token, path = request.path_params["token"], request.path_params["path"]
        stored = next((f for f in self.files.values() if f.path == path), None)
        if token not in self.bots or stored is None:
            return JSONResponse({"ok": False, "error_code": 404, "description": "Not Found"}, status_code=404)
        return Response(stored.data, media_type="application/octet-stream")

    async def store_upload(self, p: Params, name: str, kind: str) -> StoredFile:
        """The file a send method carries: a multipart upload, or the id of a file sent before."""
        upload = p.files.get(name)
        if upload is None:
            file_id = p.text(name)
            known = self.files.get(file_id or "")
            if known is None:
                raise ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
            return known
        data = upload.data
        if not data:
            raise ApiError(400, "Bad Request: file must be non-empty")
        width = height = 0
        if kind == "photo":
            width, height = _check_photo(data)
        n = len(self.files) + 1
        folder = {"photo": "photos", "video": "videos"}.get(kind, "documents")
        stored = StoredFile(
            file_id=f"AgAC{secrets.token_urlsafe(24)}",
            unique_id=f"AQAD{n}",
            data=data,
            name=upload.filename or f"file_{n}",
            mime_type=upload.content_type or "application/octet-stream",
            path=f"{folder}/file_{n}{_suffix(upload.filename)}",
            width=width,
            height=height,
        )
        self.files[stored.file_id] = stored
        return stored


def _check_photo(data: bytes) -> tuple[int, int]:
    if len(data) > 10 * MB:
        raise ApiError(400, "Bad Request: PHOTO_SAVE_FILE_INVALID")
    size = image_size(data)
    if size is None:
        raise ApiError(400, "Bad Request: IMAGE_PROCESS_FAILED")
    width, height = size
    if width + height > 10_000 or max(width, height) > 20 * max(1, min(width, height)):
        raise ApiError(400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
    return width, height


def _suffix(filename: str | None) -> str:
    if filename and "." in filename:
        return "." + filename.rsplit(".", 1)[1]
    return ""


_TOO_LARGE = (
    "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n"
    "<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx/1.18.0</center>\r\n"
    "</body>\r\n</html>\r\n"
)


# --- the methods ---------------------------------------------------------------------------------


async def get_me(fake: FakeTelegram, bot: BotAccount, p: Params) -> Any:
    return {
        **bot.user,
        "can_join_groups": True,
        "can_read_all_group_messages": False,
        "supports_inline_queries": False,
        "can_connect_to_business": False,
        "has_main_web_app": False,
    }


async def get_updates(fake: FakeTelegram, bot: BotAccount, p: Params) -> Any:
    offset, limit, timeout = p.number("offset", 0) or 0, p.number("limit", 100) or 100, p.number("timeout", 0) or 0
    allowed = p.object("allowed_updates")
    if allowed is not None:
        bot.allowed_updates = set(allowed) if allowed else set(DEFAULT_UPDATES)
    if offset > 0:
        bot.updates = [u for u in bot.updates if u["update_id"] >= offset]
    elif offset < 0:
        bot.updates = bot.updates[offset:]
    if bot.poller is not None and not bot.poller.done():
        bot.poller.set_result(None)  # the older request ends with a conflict
    mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    bot.poller = mine
    deadline = time.monotonic() + timeout
    while True:
        if bot.updates or time.monotonic() >= deadline:
            if bot.poller is mine:
                bot.poller = None
            return bot.updates[: max(1, min(limit, 100))]
        changed = asyncio.ensure_future(fake._changed.wait())
        await asyncio.wait([changed, mine], timeout=deadline - time.monotonic(), return_when=asyncio.FIRST_COMPLETED)
        changed.cancel()
        if mine.done():
            raise ApiError(409, CONFLICT)


async def delete_webhook(fake: FakeTelegram, bot: BotAccount, p: Params) -> Any:
    if p.flag("drop_pending_updates"):
        bot.updates.clear()
    return True


async def set_my_commands(fake: FakeTelegram, bot: BotAccount, p: Params) -> Any:
    commands = p.object("commands") or []
    for command in commands:
        name = command.get("command", "")
        if not (1 <= len(name) <= 32 and all(c.islower() or c.isdigit() or c == "_" for c in name)):
            raise ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
        if not 1 <= len(command.get("description", "")) <= 256:
            raise ApiError(400, "Bad Request: command description is empty")
    bot.commands = commands
    return True


async def get_my_commands(fake: FakeTelegram, bot: BotAccount, p: Params) -> Any:
    return bot.commands


def _reply_target(fake: FakeTelegram, chat_id: int, p: Params) -> Sent | None:
    reply = p.object("reply_parameters") or {}
    message_id = reply.get("message_id") or p.number("reply_to_message_id")
    if message_id is None:
        return None
    target = fake._message(chat_id, int(message_id))
    if target is None and not (reply.get("allow_sending_without_reply") or p.flag("allow_sending_without_reply")):
        raise ApiError(400, "Bad Request: message to be replied not found")
    return target


def _markup(p: Params) -> dict[str, Any] | None:
    markup = p.object("reply_markup")
    if markup is None:
        return None
    for row in markup.get("inline_keyboard", []):
        for button in row:
            if len(button.get("callback_data", "").encode()) > 64:
                raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
    return dict(markup)


async def send_message(fake: FakeTelegram, bot: BotAccount, p: Params) -> Any:
    chat_id = fake._chat_for(bot, p)
    text = _shown_text(p.text("text") or "", p.text("parse_mode"))
    if not text.strip():
        raise ApiError(400, "Bad Request: message text is empty")
    if len(text) > 4096:
        raise ApiError(400, "Bad Request: message is too long")
    reply_to, markup = _reply_target(fake, chat_id, p), _markup(p)
    fake._flood(bot, chat_id)
    return fake._append(chat_id, bot.user, text=text, reply_to=reply_to, markup=markup).as_json()


async def edit_message_text(fake: FakeTelegram, bot: BotAccount, p: Params) -> Any:
    chat_id = fake._chat_for(bot, p)
    message = fake._message(chat_id, p.number("message_id"))
    if message is None:
        raise ApiError(400, "Bad Request: message to edit not found")
    if not message.from_bot or message.sender["id"] != bot.user["id"]:
        raise ApiError(400, "Bad Request: message can't be edited")
    if message.text is None:
        raise ApiError(400, "Bad Request: there is no text in the message to edit")
    text = _shown_text(p.text("text") or "", p.text("parse_mode"))
    if not text.strip():
        raise ApiError(400, "Bad Request: message text is empty")
    markup = _markup(p)
    if text == message.text and markup == message.markup:
        raise ApiError(400, NOT_MODIFIED)
    fake._flood(bot, chat_id)
    message.edits.append(message.text)
    message.text, message.markup = text, markup
    fake._notify()
    return message.as_json()


async def delete_message(fake: FakeTelegram, bot: BotAccount, p: Params) -> Any:
    chat_id = fake._chat_for(bot, p)
    message = fake._message(chat_id, p.number("message_id"))
    if message is None:
        raise ApiError(400, "Bad Request: message to delete not found")
    if message.sender["id"] != bot.user["id"] and chat_id > 0:
        raise ApiError(400, "Bad Request: message can't be deleted for everyone")
    message.deleted = True
    return True


async def answer_callback_query(fake: FakeTelegram, bot: BotAccount, p: Params) -> Any:
    query = bot.callback_queries.get(p.text("callback_query_id") or "")
    if query is None or query["answered"]:
        raise ApiError(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
    query["answered"], query["answer"] = True, p.text("text")
    return True


async def send_chat_action(fake: FakeTelegram, bot: BotAccount, p: Params) -> Any:
    fake._chat_for(bot, p)
    return True


def _sender(kind: str) -> Method:
    async def send(fake: FakeTelegram, bot: BotAccount, p: Params) -> Any:
        chat_id = fake._chat_for(bot, p)
        caption = p.text("caption")
        if caption is not None and len(caption) > 1024:
            raise ApiError(400, "Bad Request: message caption is too long")
        stored = await fake.store_upload(p, kind, kind)
        reply_to, markup = _reply_target(fake, chat_id, p), _markup(p)
        fake._flood(bot, chat_id)
        sent = fake._append(
            chat_id, bot.user, kind=kind, file=stored, caption=caption, reply_to=reply_to, markup=markup
        )
        return sent.as_json()

    return send


async def get_file(fake: FakeTelegram, bot: BotAccount, p: Params) -> Any:
    stored = fake.files.get(p.text("file_id") or "")
    if stored is None:
        raise ApiError(400, "Bad Request: wrong file_id or the file is temporarily unavailable")
    if len(stored.data) > 20 * MB and not fake.local:
        raise ApiError(400, "Bad Request: file is too big")
    return {
        "file_id": stored.file_id,
        "file_unique_id": stored.unique_id,
        "file_size": len(stored.data),
        "file_path": stored.path,
    }


METHODS: dict[str, Method] = {
    "getme": get_me,
    "getupdates": get_updates,
    "deletewebhook": delete_webhook,
    "setmycommands": set_my_commands,
    "getmycommands": get_my_commands,
    "sendmessage": send_message,
    "editmessagetext": edit_message_text,
    "deletemessage": delete_message,
    "answercallbackquery": answer_callback_query,
    "sendchataction": send_chat_action,
    "sendphoto": _sender("photo"),
    "senddocument": _sender("document"),
    "sendvideo": _sender("video"),
    "getfile": get_file,
}


@contextlib.asynccontextmanager
async def serve(fake: FakeTelegram) -> AsyncIterator[str]:
    """Run the fake on a free local port; yields its root URL (`<url>/bot`, `<url>/file/bot`)."""
    port = free_port(None)
    server = uvicorn.Server(uvicorn.Config(fake.app, host="127.0.0.1", port=port, log_level="critical", lifespan="off"))
    task = asyncio.create_task(server.serve(), name="fake-telegram")
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        for bot in fake.bots.values():  # end the long polls so the server can stop
            if bot.poller is not None and not bot.poller.done():
                bot.poller.set_result(None)
        await asyncio.wait_for(task, 10)
