"""The slash commands of a Discord bot (`bots.discord`), built for its capability.

An image bot gets `/imagine prompt:` with `model`, `size`, `aspect`, `steps`, `seed` and `negative`; a
video bot `/video` with `seconds` too; a text or speech bot `/ask` or `/say` with `model`. Every bot
also has `/me`, `/plans`, `/cancel` and `/help`. discord.py reads each callback's signature to
declare the options (types, ranges, choices) to Discord, so the signatures here are the contract.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

import discord
from discord import app_commands

from bots import texts

if TYPE_CHECKING:
    from bots.config import BotConfig

Aspect = Literal["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9"]


class Handlers(Protocol):
    """What the commands call: the bot (`bots.discord.DiscordBot`)."""

    config: BotConfig

    @property
    def tree(self) -> app_commands.CommandTree[discord.Client]: ...

    async def request(self, interaction: discord.Interaction, prompt: str, options: Mapping[str, object]) -> None: ...
    async def me(self, interaction: discord.Interaction) -> None: ...
    async def plans(self, interaction: discord.Interaction) -> None: ...
    async def cancel_latest(self, interaction: discord.Interaction) -> None: ...
    async def help(self, interaction: discord.Interaction) -> None: ...


def add_commands(bot: Handlers) -> None:
    """The bot's slash commands: its capability's, then /me, /plans, /cancel, /help."""
    tree, capability = bot.tree, bot.config.capability
    name = texts.COMMANDS["discord"][capability].lstrip("/")
    what = texts.WHAT.get(capability, "a result")
    if capability == "image":

        @app_commands.describe(**_DESCRIBE)
        async def image(
            interaction: discord.Interaction,
            prompt: str,
            model: str | None = None,
            size: str | None = None,
            aspect: Aspect | None = None,
            steps: app_commands.Range[int, 1, 150] | None = None,
            seed: app_commands.Range[int, 0, 2**53] | None = None,
            negative: str | None = None,
        ) -> None:
            options = {"model": model, "size": size, "ar": aspect, "steps": steps, "seed": seed, "neg": negative}
            await bot.request(interaction, prompt, options)

        tree.add_command(app_commands.Command(name=name, description=f"Make {what}", callback=image))
    elif capability == "video":

        @app_commands.describe(**_DESCRIBE, seconds="How long, in seconds")
        async def video(
            interaction: discord.Interaction,
            prompt: str,
            model: str | None = None,
            seconds: app_commands.Range[float, 0.5, 60.0] | None = None,  # discord.py: min and max of one type
            size: str | None = None,
            aspect: Aspect | None = None,
            steps: app_commands.Range[int, 1, 150] | None = None,
            seed: app_commands.Range[int, 0, 2**53] | None = None,
            negative: str | None = None,
        ) -> None:
            options = {
                "model": model,
                "seconds": seconds,
                "size": size,
                "ar": aspect,
                "steps": steps,
                "seed": seed,
                "neg": negative,
            }
            await bot.request(interaction, prompt, options)

        tree.add_command(app_commands.Command(name=name, description=f"Make {what}", callback=video))
    else:

        @app_commands.describe(prompt="What to say or ask", model="A model other than the default")
        async def words(interaction: discord.Interaction, prompt: str, model: str | None = None) -> None:
            await bot.request(interaction, prompt, {"model": model})

        tree.add_command(app_commands.Command(name=name, description=f"Make {what}", callback=words))

    for command, description, handler in (
        ("me", "Your plan, and the tokens you have left today", bot.me),
        ("plans", "The plans and what they include", bot.plans),
        ("cancel", "Cancel your job that is waiting or running", bot.cancel_latest),
        ("help", "What this bot does", bot.help),
    ):
        tree.add_command(app_commands.Command(name=command, description=description, callback=_bare(handler)))


def _bare(
    handler: Callable[[discord.Interaction], Awaitable[None]],
) -> Callable[[discord.Interaction], Coroutine[Any, Any, None]]:
    """A plain function for a command without options (discord.py reads the callback's signature)."""

    async def command(interaction: discord.Interaction) -> None:
        await handler(interaction)

    return command


_DESCRIBE = {
    "prompt": "What to make",
    "model": "A model other than the default",
    "size": "Width x height, like 1024x768",
    "aspect": "Aspect ratio, instead of a size",
    "steps": "Sampling steps",
    "seed": "The same seed gives the same picture",
    "negative": "What to leave out",
}
