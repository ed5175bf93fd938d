"""How a platform module plugs into the bots service: the `Platform` protocol and its factory.

A platform module (`bots.telegram`, `bots.discord`) defines a function

    def create(config: BotConfig, token: str) -> Platform

that builds one bot's connection to its platform (not yet connected). The service then, for each
bot, opens its `BotRuntime` and calls:

- `run(runtime)`: connect to the platform and serve users until `stop()` (raising when the
  platform refuses the token or the connection dies; the service logs it and starts the bot
  again with backoff);
- `deliver(notification)`: the service runs the runtime's completion feed and hands each finished
  job of this bot here: post the result, edit the progress message (`ReplyContext.from_dict(
  notification.reply_context)`), raise `bots.completions.Undeliverable` when it never can;
- `stop()`: stop serving (stop polling, close the websocket) so `run` returns.

`create_platform(name)` imports the module lazily, so a bot of one platform runs even where the
other platform's library is not installed; a missing module fails that bot alone, with a clear error.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from base.errors import TesseraError
from bots.config import BotConfig

if TYPE_CHECKING:
    from bots.runtime import BotRuntime
    from streams.messages import Notification

MODULES = {"telegram": "bots.telegram", "discord": "bots.discord"}


@runtime_checkable
class Platform(Protocol):
    """One bot on its platform (see the module's docstring)."""

    async def run(self, runtime: BotRuntime) -> None:
        """Serve the platform's users through `runtime` until `stop()`."""

    async def deliver(self, notification: Notification) -> None:
        """Tell the user their job ended: post the result, edit the progress message."""

    async def stop(self) -> None:
        """Stop serving; `run` returns soon after."""


PlatformFactory = Callable[[BotConfig, str], Platform]


class PlatformUnavailable(TesseraError):
    """A bot's platform module cannot be loaded (not installed, or broken)."""


def factory(platform: str) -> PlatformFactory:
    """The `create(config, token)` of the platform's module, imported now."""
    module_name = MODULES.get(platform)
    if module_name is None:
        raise PlatformUnavailable(f"no platform {platform!r}; known: {', '.join(MODULES)}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PlatformUnavailable(f"the {platform} platform ({module_name}) cannot be loaded: {exc}") from exc
    create = getattr(module, "create", None)
    if not callable(create):
        raise PlatformUnavailable(f"{module_name} has no create(config, token) function")
    return create  # type: ignore[no-any-return]  # a module attribute, checked callable above


def create_platform(config: BotConfig, token: str) -> Platform:
    """The platform object for one bot, from its platform's module."""
    return factory(config.platform.value)(config, token)
