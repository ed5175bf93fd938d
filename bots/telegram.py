"""A Telegram bot on python-telegram-bot 22: commands, a progress message edited in place, results as files.

Commands: `/start` (what the bot does, the user's plan and tokens left), `/help`, the bot's
capability (`/image`, `/video`, `/ask`, `/say`; in an image or video bot's private chat plain text
is a request too), `/me`, `/plans`, `/cancel`. Options are written into the text (`--ar 16:9`,
`--steps 30`; `bots.options`). In a group the bot answers as a reply to the user's message.

A request: the bot posts its progress message at once ("Sending your request..."), submits the job
with that message's id in the job's `reply_context`, then edits it to "Queued. 2 ahead of you. Ready
in about 40 s." with a Cancel button, and on as the job runs ("Working on it 40% (step 12 of 30)"),
through the runtime's `EditThrottle`: never the same text, at most every few seconds, within 20
edits a minute in a group, backing off for a 429's `retry_after`. Telegram removes an inline
keyboard that an edit does not send again, so every progress edit carries the Cancel button.

The result comes from the completion feed (`deliver`), not from the request's handler, so it
arrives also when the bot was restarted meanwhile: the chat, the progress message and the user's
message are in the notification's `reply_context`. An image is sent as a photo when it is at most
10 MB (and Telegram takes it as one), else as a document up to 50 MB, else as a signed link; a
video likewise (MP4 as a video). The progress message then becomes "Done." (without its button).
A user who blocked the bot, or a chat that is gone or removed the bot, makes the result
`Undeliverable`: recorded and acknowledged. Deliveries are at least once: a bot killed between
Telegram taking the photo and NATS taking the acknowledgement sends it again when it is back.

Addresses: `api_base_url` and `file_base_url` of the bot (or TESSERA_TELEGRAM_API_URL /
TESSERA_TELEGRAM_FILE_URL) replace `https://api.telegram.org/bot` and `.../file/bot`; the token is
appended, as python-telegram-bot does. With a local Bot API server (`telegram-bot-api --local`)
the bot's `local = true` (or TESSERA_TELEGRAM_LOCAL=1) uploads results up to 2000 MB, not linked.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import uuid
from collections import OrderedDict
from typing import Any

from telegram import BotCommand, InlineKeyboardButton, InlineKeyboardMarkup, Message, ReplyParameters, Update
from telegram.error import BadRequest, Forbidden, RetryAfter, TelegramError
from telegram.ext import (
    AIORateLimiter,
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bots import texts
from bots.completions import Undeliverable
from bots.config import BotConfig
from bots.limits import Flooded, RetryLater
from bots.options import OptionError
from bots.reply import Delivery, ReplyContext
from bots.runtime import BotRuntime
from gateway.client import ApiError
from streams.messages import Notification

log = logging.getLogger(__name__)

# python-telegram-bot 22 warns on every RetryAfter unless durations are opted in to timedelta, the
# type of its next major version (it reads the variable when it builds one); `retry_seconds` reads both.
os.environ.setdefault("PTB_TIMEDELTA", "true")

PHOTO_LIMIT = 10_000_000  # bytes: Telegram's photo upload limit ("10 MB")
UPLOAD_LIMIT = 50_000_000  # any other upload through api.telegram.org
LOCAL_UPLOAD_LIMIT = 2_000_000_000  # through a local Bot API server (`--local`)
TEXT_LIMIT = 4096
CANCEL_DATA = "cancel:"
DELIVERY_RETRIES = 3  # a result waits out this many 429s (the rate limiter sleeps their retry_after)
PHOTO_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
PICTURES = ("image", "video")

Context = ContextTypes.DEFAULT_TYPE


def create(config: BotConfig, token: str) -> TelegramBot:
    """The `bots.platform` factory: one Telegram bot, not yet connected."""
    return TelegramBot(config, token)


def retry_seconds(exc: RetryAfter) -> float:
    """The seconds a RetryAfter asks to wait, whichever type python-telegram-bot gives them in."""
    value: Any = exc.retry_after
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


def gone(exc: TelegramError) -> bool:
    """Whether the chat can never be written to again: blocked, kicked, deleted."""
    message = str(exc).lower()
    return isinstance(exc, Forbidden) or "chat not found" in message or "user is deactivated" in message


class TelegramBot:
    """One Telegram bot (`bots.platform.Platform`): polls Telegram for updates and answers them."""

    def __init__(self, config: BotConfig, token: str, *, poll_timeout_s: int = 10) -> None:
        self.config = config
        self.poll_timeout_s = poll_timeout_s
        self.upload_limit = LOCAL_UPLOAD_LIMIT if config.local else UPLOAD_LIMIT
        builder = Application.builder().token(token).rate_limiter(AIORateLimiter()).concurrent_updates(True)
        if config.api_base_url:
            builder = builder.base_url(config.api_base_url)
        if config.file_base_url:
            builder = builder.base_file_url(config.file_base_url)
        self.app = builder.build()
        self._runtime: BotRuntime | None = None
        self._stopping = asyncio.Event()
        self._followers: set[asyncio.Task[None]] = set()
        self._delivered: OrderedDict[uuid.UUID, None] = OrderedDict()  # this process's, against repeats
        self._add_handlers()

    @property
    def runtime(self) -> BotRuntime:
        if self._runtime is None:
            raise RuntimeError("the bot is not running")
        return self._runtime

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(self, runtime: BotRuntime) -> None:
        """Poll Telegram and answer users until `stop()`; raises when Telegram refuses the token."""
        self._runtime = runtime
        async with self.app:
            await self.app.bot.set_my_commands(self._commands())
            await self.app.start()
            updater = self.app.updater
            assert updater is not None  # the builder makes one
            await updater.start_polling(
                timeout=self.poll_timeout_s, allowed_updates=[Update.MESSAGE, Update.CALLBACK_QUERY]
            )
            try:
                await self._stopping.wait()
            finally:
                await updater.stop()
                for task in list(self._followers):
                    task.cancel()
                await asyncio.gather(*self._followers, return_exceptions=True)
                await self.app.stop()

    async def stop(self) -> None:
        self._stopping.set()

    # --- requests ---------------------------------------------------------------------------------

    def _add_handlers(self) -> None:
        capability = self.config.capability
        command = texts.COMMANDS["telegram"][capability].lstrip("/")
        add = self.app.add_handler
        add(CommandHandler("start", self._start))
        add(CommandHandler("help", self._help))
        add(CommandHandler("me", self._me))
        add(CommandHandler("plans", self._plans))
        add(CommandHandler("cancel", self._cancel))
        add(CommandHandler(command, self._request))
        if capability in PICTURES:
            add(MessageHandler(filters.ChatType.PRIVATE & filters.TEXT & ~filters.COMMAND, self._request))
        add(CallbackQueryHandler(self._cancel_button, pattern=f"^{CANCEL_DATA}"))

    def _commands(self) -> list[BotCommand]:
        what = texts.WHAT.get(self.config.capability, "a result")
        command = texts.COMMANDS["telegram"][self.config.capability].lstrip("/")
        return [
            BotCommand(command, f"Make {what} from a description"),
            BotCommand("me", "Your plan and the tokens left today"),
            BotCommand("plans", "The plans"),
            BotCommand("cancel", "Cancel your waiting or running job"),
            BotCommand("help", "What I can do"),
        ]

    async def _start(self, update: Update, context: Context) -> None:
        message, user = update.effective_message, update.effective_user
        if message is None or user is None:
            return
        me = None
        with contextlib.suppress(ApiError):
            me = await self.runtime.me(self.runtime.user_ref(user.id))
        await self._answer(message, texts.welcome("telegram", self.config.capability, me))

    async def _help(self, update: Update, context: Context) -> None:
        if update.effective_message is not None:
            await self._answer(update.effective_message, texts.help_text("telegram", self.config.capability))

    async def _me(self, update: Update, context: Context) -> None:
        message, user = update.effective_message, update.effective_user
        if message is None or user is None:
            return
        user_ref = self.runtime.user_ref(user.id)
        try:
            text = texts.me_text(await self.runtime.me(user_ref))
        except ApiError as exc:
            text = await self.runtime.explain(user_ref, exc)
        await self._answer(message, text)

    async def _plans(self, update: Update, context: Context) -> None:
        message, user = update.effective_message, update.effective_user
        if message is None or user is None:
            return
        user_ref = self.runtime.user_ref(user.id)
        try:
            current = None
            with contextlib.suppress(ApiError):
                plan = (await self.runtime.me(user_ref)).plan
                current = plan.tier if plan is not None else None
            text = texts.plans_text(await self.runtime.plans(), current)
        except ApiError as exc:
            text = await self.runtime.explain(user_ref, exc)
        await self._answer(message, text)

    async def _cancel(self, update: Update, context: Context) -> None:
        message, user = update.effective_message, update.effective_user
        if message is None or user is None:
            return
        user_ref = self.runtime.user_ref(user.id)
        try:
            cancelled = await self.runtime.cancel_latest(user_ref)
            text = texts.nothing_to_cancel() if cancelled is None else texts.cancelled()
        except ApiError as exc:
            text = await self.runtime.explain(user_ref, exc)
        await self._answer(message, text)

    async def _request(self, update: Update, context: Context) -> None:
        """A request: the progress message first, then the job (its id in the reply context)."""
        message, user, chat = update.effective_message, update.effective_user, update.effective_chat
        if message is None or user is None or chat is None or not message.text:
            return
        prompt = message.text
        if prompt.startswith("/"):  # "/image@this_bot a fox --ar 16:9": what follows the command
            prompt = prompt.split(maxsplit=1)[1] if len(prompt.split(maxsplit=1)) > 1 else ""
        group = chat.type != chat.PRIVATE
        progress = await self._answer(message, texts.submitting())
        reply = ReplyContext(
            chat_id=chat.id, message_id=progress.message_id, user_message_id=message.message_id, group=group
        )
        user_ref = self.runtime.user_ref(user.id)
        try:
            job = await self.runtime.submit(
                user_ref, None, prompt, reply, idempotency_key=f"{chat.id}:{message.message_id}"
            )
        except (ApiError, OptionError, Flooded) as exc:
            await self._final_edit(reply, await self.runtime.explain(user_ref, exc))
            return
        await self._progress_edit(reply, texts.queued(job.queue_position, job.estimated_time_seconds), job.job_id)
        task = asyncio.create_task(self._follow(user_ref, reply, job.job_id), name=f"follow-{job.job_id}")
        self._followers.add(task)
        task.add_done_callback(self._followers.discard)

    async def _follow(self, user_ref: str, reply: ReplyContext, job_id: uuid.UUID) -> None:
        """Edit the progress message as the job moves; its end is `deliver`'s to write."""
        try:
            async for update in self.runtime.follow(user_ref, job_id):
                if update.terminal:
                    return
                await self._progress_edit(reply, texts.status(update), job_id)
        except (ApiError, TelegramError, OSError) as exc:  # the result still comes through `deliver`
            log.info("%s: stopped following job %s: %s", self.config.id, job_id, exc)

    async def _cancel_button(self, update: Update, context: Context) -> None:
        query = update.callback_query
        if query is None or query.data is None:
            return
        user_ref = self.runtime.user_ref(query.from_user.id)
        try:
            job_id = uuid.UUID(query.data.removeprefix(CANCEL_DATA))
            await self.runtime.cancel(user_ref, job_id)
            text = texts.cancelled()
        except ValueError:
            text = texts.refusal(ApiError(404, "JOB_NOT_FOUND", "no such job"))
        except ApiError as exc:
            text = await self.runtime.explain(user_ref, exc)
        with contextlib.suppress(TelegramError):  # a query answered late is only a lost toast
            await query.answer(text[:200])

    # --- sending ----------------------------------------------------------------------------------

    async def _answer(self, message: Message, text: str) -> Message:
        """Answer a user's message: in a group as a reply to it."""
        reply = None
        if message.chat.type != message.chat.PRIVATE:
            reply = ReplyParameters(message.message_id, allow_sending_without_reply=True)
        return await self.app.bot.send_message(message.chat_id, text[:TEXT_LIMIT], reply_parameters=reply)

    async def _progress_edit(self, reply: ReplyContext, text: str, job_id: uuid.UUID) -> None:
        """A progress edit with its Cancel button, if the throttle lets it through now."""
        if reply.message_id is None:
            return
        markup = InlineKeyboardMarkup(
            [[InlineKeyboardButton(texts.CANCEL_BUTTON, callback_data=f"{CANCEL_DATA}{job_id}")]]
        )

        async def send(new_text: str) -> None:
            await self._edit(reply, new_text, markup)

        await self.runtime.edits.edit(reply.chat_id, reply.message_id, text, send, group=reply.group)

    async def _final_edit(self, reply: ReplyContext, text: str) -> None:
        """The progress message's last word (no button): waits out the throttle and 429s."""
        if reply.message_id is None:
            await self._send_text(reply, text)
            return

        async def send(new_text: str) -> None:
            await self._edit(reply, new_text, None)

        await self.runtime.edits.edit(reply.chat_id, reply.message_id, text, send, group=reply.group, final=True)
        self.runtime.edits.forget(reply.chat_id, reply.message_id)

    async def _edit(self, reply: ReplyContext, text: str, markup: InlineKeyboardMarkup | None) -> None:
        try:
            await self.app.bot.edit_message_text(
                text[:TEXT_LIMIT], chat_id=reply.chat_id, message_id=int(str(reply.message_id)), reply_markup=markup
            )
        except RetryAfter as exc:
            raise RetryLater(retry_seconds(exc)) from exc
        except BadRequest as exc:
            message = str(exc).lower()
            if "message is not modified" in message or "message to edit not found" in message:
                return  # already says so (an edit before a restart), or the user deleted it
            raise

    async def _send_text(self, reply: ReplyContext, text: str) -> None:
        for start in range(0, max(1, len(text)), TEXT_LIMIT):
            await self.app.bot.send_message(
                reply.chat_id,
                text[start : start + TEXT_LIMIT],
                reply_parameters=self._reply_to(reply),
                rate_limit_args=DELIVERY_RETRIES,
            )

    def _reply_to(self, reply: ReplyContext) -> ReplyParameters | None:
        if not reply.group or reply.user_message_id is None:
            return None
        return ReplyParameters(int(str(reply.user_message_id)), allow_sending_without_reply=True)

    # --- results ----------------------------------------------------------------------------------

    async def deliver(self, notification: Notification) -> None:
        """Post a finished job's result and put the last word in its progress message."""
        reply = ReplyContext.from_dict(notification.reply_context)
        if reply is None or notification.user_ref is None:
            log.warning("%s: job %s came back without a chat to answer in", self.config.id, notification.job_id)
            return
        if notification.job_id in self._delivered:
            return
        try:
            if notification.status == "COMPLETED":
                for artifact in notification.artifacts:
                    delivery = await self.runtime.artifact(
                        notification.user_ref, notification.job_id, artifact, max_bytes=self.upload_limit
                    )
                    await self._post(reply, delivery)
                final = texts.done(notification.cost_tokens)
            elif notification.status == "CANCELLED":
                final = texts.cancelled()
            else:
                final = texts.failed(notification.error)
            await self._final_edit(reply, final)
        except TelegramError as exc:
            if gone(exc):
                raise Undeliverable(f"chat {reply.chat_id}: {exc}") from exc
            raise
        self._delivered[notification.job_id] = None
        if len(self._delivered) > 10_000:
            self._delivered.popitem(last=False)

    async def _post(self, reply: ReplyContext, delivery: Delivery) -> None:
        """One artifact: a photo, a video, a document, text, or a link when it is too large."""
        if delivery.data is None:
            if delivery.text is not None:
                await self._send_text(reply, delivery.text)
            elif delivery.url is not None:
                await self._send_text(
                    reply, texts.delivered_as_link(delivery.url, delivery.size_bytes, delivery.url_expires_at)
                )
            return
        bot, chat, kwargs = self.app.bot, reply.chat_id, self._upload_args(reply)
        if delivery.kind == "image" and delivery.size_bytes <= PHOTO_LIMIT and delivery.content_type in PHOTO_TYPES:
            try:
                await bot.send_photo(chat, delivery.data, filename=delivery.filename, **kwargs)
                return
            except BadRequest as exc:  # dimensions or format Telegram will not show as a photo
                log.info("%s: photo refused (%s); sending it as a document", self.config.id, exc)
        if delivery.kind == "video" and delivery.content_type == "video/mp4":
            await bot.send_video(chat, delivery.data, filename=delivery.filename, **kwargs)
            return
        await bot.send_document(chat, delivery.data, filename=delivery.filename, **kwargs)

    def _upload_args(self, reply: ReplyContext) -> dict[str, Any]:
        return {
            "reply_parameters": self._reply_to(reply),
            "rate_limit_args": DELIVERY_RETRIES,
            "write_timeout": 120,
            "read_timeout": 60,
        }
