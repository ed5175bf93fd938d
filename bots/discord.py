"""A Discord bot on discord.py 2.x: slash commands, a progress message edited in place, results as files.

Commands: the bot's capability (`/imagine` for an image bot, `/video`, `/ask`, `/say`) with its
options, and `/me`, `/plans`, `/cancel`, `/help`. A request is deferred at once (Discord wants an
answer within 3 seconds), submitted, and the "thinking..." message becomes the progress message:
queue position and ETA with a Cancel button, then progress, edited through the runtime's
`EditThrottle` (never the same text twice, at most every few seconds), and at the end the result as
an attachment (at most the interaction's `attachment_size_limit`, else a signed link).

An interaction's token lets the bot edit its reply for 15 minutes. The job's `reply_context` keeps
the channel, the token, when the interaction came and the progress message's id, so a restarted
bot edits the same message. The token is sealed there (`bots.reply.TokenSeal`): the job and its
events are kept for good and read by operators, the API and the read models, and none of them
should hold a credential that posts as the bot. After the window (`window_s`, a minute short of
15) the bot posts the result in the channel with its own token, mentioning the user; a channel it
may not post in makes the result `Undeliverable`.

Addresses: discord.py reads its REST base (`discord.http.Route.BASE`) and its gateway
(`DiscordWebSocket.DEFAULT_GATEWAY`) from class attributes, so `create` sets them from the bot's
`api_base_url` and `gateway_url` (or TESSERA_DISCORD_API_URL / TESSERA_DISCORD_GATEWAY_URL); plain
http and ws work. They hold for the whole process: Discord bots of one process share one address.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

import discord
import httpx
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket

from bots import texts
from bots.completions import Undeliverable
from bots.config import BotConfig, ConfigError
from bots.discord_commands import add_commands
from bots.limits import Flooded, RetryLater
from bots.options import OptionError
from bots.reply import Delivery, ReplyContext, TokenSeal
from bots.runtime import BotRuntime
from gateway.client import ApiError
from streams.messages import Notification

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_UPLOAD_LIMIT = 10 * MiB  # what a bot may attach where the interaction does not say
TOKEN_LIFETIME_S = 15 * 60
MESSAGE_LIMIT = 2000  # characters in a Discord message
CANCEL_ID = "tessera:cancel:"

_LIBRARY_ADDRESSES = (discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
_running: dict[int, tuple[str | None, str | None]] = {}  # the addresses of each running bot of this process


def use_addresses(owner: object, api_base_url: str | None, gateway_url: str | None) -> None:
    """Point discord.py at Discord's REST base and gateway (None: discord.com's own) for `owner`'s
    run. discord.py keeps them process-wide, so bots running at once must agree (else ConfigError)."""
    wanted = (api_base_url, gateway_url)
    others = {addresses for key, addresses in _running.items() if key != id(owner)}
    if others and others != {wanted}:
        raise ConfigError(f"Discord bots running in one process share one address; this process uses {others.pop()}")
    _running[id(owner)] = wanted
    discord.http.Route.BASE = api_base_url.rstrip("/") if api_base_url else _LIBRARY_ADDRESSES[0]
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url) if gateway_url else _LIBRARY_ADDRESSES[1]


def release_addresses(owner: object) -> None:
    _running.pop(id(owner), None)


def create(config: BotConfig, token: str) -> DiscordBot:
    """The `bots.platform` factory: one Discord bot, not yet connected."""
    return DiscordBot(config, token)


class CancelButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]], template=r"tessera:cancel:(?P<job>[0-9a-f-]{36})"
):
    """The Cancel button under a progress message; its custom id names the job, so a restarted bot
    (which registers the template again) still answers it."""

    def __init__(self, job_id: uuid.UUID) -> None:
        super().__init__(
            discord.ui.Button(
                label=texts.CANCEL_BUTTON, style=discord.ButtonStyle.danger, custom_id=f"{CANCEL_ID}{job_id}"
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> CancelButton:
        return cls(uuid.UUID(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        client = interaction.client
        if isinstance(client, _Client):
            await client.bot.cancel_by_button(interaction, self.job_id)


class _Client(discord.Client):
    """discord.py's client, knowing its bot (the Cancel button reaches the bot through it)."""

    def __init__(self, bot: DiscordBot) -> None:
        super().__init__(intents=discord.Intents.none(), max_ratelimit_timeout=30.0)
        self.bot = bot


class DiscordBot:
    """One Discord bot (`bots.platform.Platform`): serves slash commands, delivers results."""

    def __init__(self, config: BotConfig, token: str, *, window_s: float = TOKEN_LIFETIME_S - 60) -> None:
        self.config = config
        self.window_s = window_s  # how long after an interaction the bot still uses its token
        self._token = token
        self._seal = TokenSeal(token)
        self._client = _Client(self)
        self._tree = app_commands.CommandTree(self._client)
        self._runtime: BotRuntime | None = None
        self._logged_in = asyncio.Event()
        # By progress message: requests still posting their "queued" message (the result waits for
        # it), and the tasks editing progress (the result stops them).
        self._announcing: dict[str, asyncio.Event] = {}
        self._followers: dict[str, asyncio.Task[None]] = {}
        add_commands(self)

    @property
    def client(self) -> discord.Client:
        return self._client

    @property
    def tree(self) -> app_commands.CommandTree[discord.Client]:
        return self._tree

    @property
    def runtime(self) -> BotRuntime:
        if self._runtime is None:
            raise RuntimeError("the Discord bot is not running")
        return self._runtime

    # --- Platform -------------------------------------------------------------------------------

    async def run(self, runtime: BotRuntime) -> None:
        """Log in, register the commands (a bulk overwrite), then hold the gateway until `stop()`."""
        self._runtime = runtime
        use_addresses(self, self.config.api_base_url, self.config.gateway_url)
        self._client.add_dynamic_items(CancelButton)
        try:
            await self._client.login(self._token)
            await self._tree.sync()
            self._logged_in.set()
            await self._client.connect(reconnect=True)
        finally:
            await self.stop()
            release_addresses(self)

    async def stop(self) -> None:
        tasks = list(self._followers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not self._client.is_closed():
            await self._client.close()

    async def deliver(self, notification: Notification) -> None:
        """Turn the progress message into the result (or post it in the channel after the window)."""
        context = ReplyContext.from_dict(notification.reply_context)
        if context is None or context.channel_id is None:
            raise Undeliverable(f"job {notification.job_id} has no Discord reply context")
        await self._logged_in.wait()
        await self._quiet(str(context.message_id))
        user_ref = notification.user_ref or self.runtime.user_ref(context.extra.get("user_id", "0"))
        limit = int(context.extra.get("upload_limit") or DEFAULT_UPLOAD_LIMIT)
        text, deliveries = await self._result(notification, user_ref, limit)
        if self._in_window(context) and context.message_id is not None:
            try:
                await self._edit_reply(context, text, deliveries, final=True)
                return
            except discord.NotFound:
                log.info("%s: progress message of job %s is gone; posting instead", self.config.id, notification.job_id)
            except discord.HTTPException as exc:
                if exc.status != 401:
                    raise
        await self._post(context, text, deliveries)

    # --- requests -------------------------------------------------------------------------------

    async def request(self, interaction: discord.Interaction, prompt: str, options: Mapping[str, object]) -> None:
        """A generation command: defer, submit, show the queue, follow the job until it ends."""
        callback = await interaction.response.defer(thinking=True)
        runtime = self.runtime
        user_ref = runtime.user_ref(interaction.user.id)
        context = self._context(interaction, callback.message_id if callback else None)
        key = str(context.message_id)
        announced = self._announcing[key] = asyncio.Event()
        try:
            try:
                job = await runtime.submit(
                    user_ref, None, prompt, context, options, idempotency_key=str(interaction.id)
                )
            except (ApiError, OptionError, Flooded) as exc:
                await interaction.followup.send(_fit(await runtime.explain(user_ref, exc)))
                return
            text = texts.queued(job.queue_position, job.estimated_time_seconds)
            view = discord.ui.View(timeout=None)
            view.add_item(CancelButton(job.job_id))
            message = await interaction.followup.send(text, view=view, wait=True)
            if context.message_id is None:
                context = replace(context, message_id=str(message.id))
            runtime.edits.remember(context.channel_id, context.message_id, text)
            follower = asyncio.create_task(self._follow(user_ref, job.job_id, context), name=f"follow-{job.job_id}")
            self._followers[key] = follower
            follower.add_done_callback(lambda _: self._followers.pop(key, None))
        finally:
            announced.set()
            self._announcing.pop(key, None)

    async def _quiet(self, key: str) -> None:
        """Before the result: let the request post its "queued" message, and stop editing progress."""
        announcing = self._announcing.get(key)
        if announcing is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(announcing.wait(), 30)
        follower = self._followers.pop(key, None)
        if follower is not None:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)

    async def _follow(self, user_ref: str, job_id: uuid.UUID, context: ReplyContext) -> None:
        """Edit the progress message as the job moves; the completion feed says the last word."""
        try:
            async for update in self.runtime.follow(user_ref, job_id):
                if update.terminal or not self._in_window(context):
                    return
                await self._edit_reply(context, texts.status(update), None, final=False)
        except (ApiError, discord.HTTPException, httpx.HTTPError, OSError) as exc:  # the result comes anyway
            log.info("%s: stopped following job %s: %s", self.config.id, job_id, exc)

    def _context(self, interaction: discord.Interaction, message_id: int | None) -> ReplyContext:
        received = time.time()
        created = min(received, interaction.created_at.timestamp())
        return ReplyContext(
            chat_id=str(interaction.channel_id),
            channel_id=str(interaction.channel_id),
            message_id=str(message_id) if message_id else None,
            group=interaction.guild_id is not None,
            interaction_token=self._seal.seal(interaction.token),
            application_id=str(interaction.application_id),
            created_at=created,
            extra={"user_id": str(interaction.user.id), "upload_limit": interaction.filesize_limit},
        )

    async def cancel_by_button(self, interaction: discord.Interaction, job_id: uuid.UUID) -> None:
        runtime = self.runtime
        user_ref = runtime.user_ref(interaction.user.id)
        try:
            await runtime.cancel(user_ref, job_id)
        except ApiError as exc:
            await interaction.response.send_message(_fit(await runtime.explain(user_ref, exc)), ephemeral=True)
            return
        await interaction.response.edit_message(view=None)  # the button goes; the result edits the text

    async def cancel_latest(self, interaction: discord.Interaction) -> None:
        await self._answer(interaction, self._cancel_latest_text)

    async def _cancel_latest_text(self, user_ref: str) -> str:
        cancelled = await self.runtime.cancel_latest(user_ref)
        return texts.nothing_to_cancel() if cancelled is None else texts.cancelled()

    async def me(self, interaction: discord.Interaction) -> None:
        await self._answer(interaction, lambda user_ref: _text(texts.me_text, self.runtime.me(user_ref)))

    async def plans(self, interaction: discord.Interaction) -> None:
        async def plans_text(user_ref: str) -> str:
            me = await self.runtime.me(user_ref)
            return texts.plans_text(await self.runtime.plans(), me.plan.tier if me.plan else None)

        await self._answer(interaction, plans_text)

    async def help(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(texts.help_text("discord", self.config.capability), ephemeral=True)

    async def _answer(self, interaction: discord.Interaction, answer: Callable[[str], Awaitable[str]]) -> None:
        """A quick command: deferred (only the user sees it), answered with a sentence."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        user_ref = self.runtime.user_ref(interaction.user.id)
        try:
            text = await answer(user_ref)
        except ApiError as exc:
            text = await self.runtime.explain(user_ref, exc)
        await interaction.followup.send(_fit(text), ephemeral=True)

    # --- replies --------------------------------------------------------------------------------

    def _in_window(self, context: ReplyContext) -> bool:
        """Whether the interaction's token still answers: within its 15 minutes, and readable."""
        return (
            context.created_at is not None
            and time.time() - context.created_at < self.window_s
            and self._seal.open(context.interaction_token) is not None
        )

    def _webhook(self, context: ReplyContext) -> discord.Webhook:
        token = self._seal.open(context.interaction_token)
        assert context.application_id is not None and token is not None
        return discord.Webhook.partial(int(context.application_id), token, client=self._client)

    async def _edit_reply(
        self, context: ReplyContext, text: str, deliveries: list[Delivery] | None, *, final: bool
    ) -> bool:
        """Edit the progress message through the throttle; `deliveries` (final) replace its button."""
        assert context.message_id is not None and context.channel_id is not None
        webhook, message_id = self._webhook(context), int(context.message_id)

        async def send(content: str) -> None:
            try:
                if deliveries is None:
                    await webhook.edit_message(message_id, content=content)
                else:
                    await webhook.edit_message(message_id, content=content, attachments=_files(deliveries), view=None)
            except discord.RateLimited as exc:
                raise RetryLater(exc.retry_after) from exc

        edits = self.runtime.edits
        sent = await edits.edit(context.channel_id, context.message_id, text, send, group=context.group, final=final)
        if final:
            edits.forget(context.channel_id, context.message_id)
        return sent

    async def _post(self, context: ReplyContext, text: str, deliveries: list[Delivery]) -> None:
        """After the interaction's window: a new message in the channel, with the bot's own token."""
        assert context.channel_id is not None
        channel = self._client.get_partial_messageable(int(context.channel_id))
        mention = f"<@{context.extra['user_id']}> " if context.extra.get("user_id") else ""
        try:
            await channel.send(_fit(mention + text), files=_files(deliveries))
        except (discord.Forbidden, discord.NotFound) as exc:
            raise Undeliverable(f"channel {context.channel_id}: {exc}") from exc

    async def _result(self, notification: Notification, user_ref: str, limit: int) -> tuple[str, list[Delivery]]:
        """The final text and the files of a finished job."""
        if notification.status == "CANCELLED":
            return texts.cancelled(), []
        if notification.status != "COMPLETED":
            return texts.failed(notification.error), []
        deliveries = [
            await self.runtime.artifact(user_ref, notification.job_id, a, max_bytes=limit)
            for a in notification.artifacts
        ]
        lines = [texts.done(notification.cost_tokens)]
        for delivery in deliveries:
            if delivery.data is None and delivery.url is not None:
                lines.append(texts.delivered_as_link(delivery.url, delivery.size_bytes, delivery.url_expires_at))
            elif delivery.kind == "text" and delivery.text is not None:
                lines.append(delivery.text)
        return "\n".join(lines), [d for d in deliveries if d.data is not None and d.kind != "text"]


def _files(deliveries: list[Delivery]) -> list[discord.File]:
    """Fresh file objects for each attempt (discord.py reads a File once)."""
    return [discord.File(io.BytesIO(d.data or b""), filename=d.filename) for d in deliveries]


def _fit(text: str) -> str:
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "\u2026"


async def _text(render: Callable[[Any], str], value: Awaitable[Any]) -> str:
    return render(await value)
