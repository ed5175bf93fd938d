"""The bots file: which bots run, on which platform, serving which capability, with what defaults.

One TOML file lists every bot (`docs/bots.example.toml` has the twelve of the product documents):

    tessera_url = "http://127.0.0.1:8000"      # optional; default: the running platform's API

    [[bots]]
    id = "tg-img-1"                            # the bot's id in Tessera: its frontend key's bot id
    platform = "telegram"                      # telegram | discord
    capability = "image"                       # image | video | text | tts
    token_env = "TG_IMG_1_TOKEN"               # or token_file = "/run/secrets/tg-img-1"
    frontend_key_env = "TG_IMG_1_KEY"          # or frontend_key_file = ...; neither: `tessera up` issues it
    # api_base_url, file_base_url, local (Telegram), api_base_url, gateway_url (Discord): see below
    [bots.defaults]
    model = "sdxl"
    size = "1024x1024"
    steps = 30

Secrets never sit in the file: a `token` or `frontend_key` key is refused, and the token and key
are read from their environment variable or file only when the bot starts (`BotConfig.token()`,
`BotConfig.frontend_key()`). Each error names the bot and the field, so an operator with twelve
bots knows which line to fix.

A platform's address is per bot, with a global environment fallback for all bots of that platform
(a local Telegram Bot API server, a proxy, or the tests' fakes): TESSERA_TELEGRAM_API_URL,
TESSERA_TELEGRAM_FILE_URL, TESSERA_DISCORD_API_URL, TESSERA_DISCORD_GATEWAY_URL. None means the
platform library's own default (api.telegram.org, discord.com). Likewise a Telegram bot's `local`
(true: its Bot API server runs with `--local`, so it uploads up to 2000 MB instead of 50 MB), with
TESSERA_TELEGRAM_LOCAL (1/true/yes) for all Telegram bots when a bot does not say.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from base.errors import TesseraError
from streams import subjects as s

BOTS_FILE_ENV = "TESSERA_BOTS_FILE"

PLATFORM_URL_ENV = {
    ("telegram", "api_base_url"): "TESSERA_TELEGRAM_API_URL",
    ("telegram", "file_base_url"): "TESSERA_TELEGRAM_FILE_URL",
    ("discord", "api_base_url"): "TESSERA_DISCORD_API_URL",
    ("discord", "gateway_url"): "TESSERA_DISCORD_GATEWAY_URL",
}
TELEGRAM_LOCAL_ENV = "TESSERA_TELEGRAM_LOCAL"

# What `[bots.defaults]` may set; `bots.options.build_params` reads them.
DEFAULT_KEYS = frozenset({"model", "size", "ar", "steps", "seed", "neg", "seconds", "cfg"})

_BOT_KEYS = frozenset(
    {
        "id",
        "platform",
        "capability",
        "token_env",
        "token_file",
        "frontend_key_env",
        "frontend_key_file",
        "defaults",
        "api_base_url",
        "file_base_url",
        "gateway_url",
        "local",
        "tessera_url",
        "flood_per_minute",
        "flood_burst",
    }
)
_SECRET_KEYS = ("token", "frontend_key", "key", "api_key")


class ConfigError(TesseraError):
    """The bots file cannot be used as it is."""

    def __init__(self, message: str, *, bot: str | None = None, field: str | None = None) -> None:
        where = f"bot {bot!r}" if bot else "bots file"
        if field:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")
        self.bot = bot
        self.field = field


class BotPlatform(StrEnum):
    """The platforms a bot can live on; the value is also its frontend name in Tessera."""

    TELEGRAM = "telegram"
    DISCORD = "discord"


CAPABILITIES = ("image", "video", "text", "tts")


@dataclass(frozen=True, kw_only=True)
class Secret:
    """Where a secret is read from: an environment variable or a file (its first line). `issued`: a
    frontend key the file does not place, which `tessera up` issues and keeps in its data directory
    (`tessera.bots_setup` names the file)."""

    env: str | None = None
    file: Path | None = None
    issued: bool = False

    def describe(self) -> str:
        if self.env:
            return f"environment variable {self.env}"
        where = f"file {self.file}" if self.file else "the data directory"
        return f"{where} (the key `tessera up` issues)" if self.issued else where

    def read(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The secret, or None when its variable is unset or empty, or its file missing or empty."""
        if self.env:
            value = (environ if environ is not None else os.environ).get(self.env, "").strip()
            return value or None
        if self.file is None:  # an issued key not yet placed
            return None
        try:
            value = self.file.read_text().strip()
        except OSError:
            return None
        return value or None


@dataclass(frozen=True, kw_only=True)
class BotConfig:
    """One bot of the file, validated. `id` is its bot id in Tessera (`tessera frontends create
    --frontend <platform> --bot-id <id>`), so its NATS user is `bot:<platform>:<id>`."""

    id: str
    platform: BotPlatform
    capability: str
    token_source: Secret
    frontend_key_source: Secret
    defaults: Mapping[str, Any] = field(default_factory=dict)
    api_base_url: str | None = None  # Telegram Bot API base (".../bot") or Discord REST base (".../api/v10")
    file_base_url: str | None = None  # Telegram only: file downloads (".../file/bot")
    gateway_url: str | None = None  # Discord only: the gateway websocket ("wss://gateway.discord.gg")
    local: bool = False  # Telegram only: its Bot API server runs with --local (uploads up to 2000 MB)
    tessera_url: str | None = None  # None: the running platform's API (the launcher decides)
    flood_per_minute: int = 6  # requests one user may make of this bot a minute, on top of the plan
    flood_burst: int = 3  # of which this many at once

    @property
    def frontend(self) -> str:
        """The bot's frontend name in Tessera: its platform."""
        return self.platform.value

    def user_ref(self, platform_user_id: int | str) -> str:
        """The Tessera user this bot acts for: `telegram:<id>` / `discord:<id>`."""
        return f"{self.frontend}:{platform_user_id}"

    def token(self, environ: Mapping[str, str] | None = None) -> str:
        """The platform token; ConfigError naming the bot when its source holds none."""
        return self._secret(self.token_source, "token", environ)

    def frontend_key(self, environ: Mapping[str, str] | None = None) -> str:
        """The bot's Tessera frontend key; ConfigError naming the bot when its source holds none."""
        return self._secret(self.frontend_key_source, "frontend_key", environ)

    def _secret(self, source: Secret, name: str, environ: Mapping[str, str] | None) -> str:
        value = source.read(environ)
        if value is None:
            field_name = f"{name}_env" if source.env else f"{name}_file"
            raise ConfigError(f"no {name} in {source.describe()}", bot=self.id, field=field_name)
        return value


def default_path(data_dir: Path) -> Path:
    """TESSERA_BOTS_FILE, else `<data dir>/bots.toml`."""
    value = os.environ.get(BOTS_FILE_ENV)
    return Path(value) if value else data_dir / "bots.toml"


def load(path: str | Path, environ: Mapping[str, str] | None = None) -> list[BotConfig]:
    """The bots of the file at `path`; ConfigError (naming the bot and the field) for anything wrong.

    `environ` (default `os.environ`) supplies the platform address fallbacks; secrets are not read here.
    """
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse(document, environ, base=path.parent)


def parse(
    document: Mapping[str, Any], environ: Mapping[str, str] | None = None, *, base: Path = Path()
) -> list[BotConfig]:
    """The bots of an already-read TOML document (see `load`); relative secret files are under `base`."""
    env = environ if environ is not None else os.environ
    unknown = set(document) - {"bots", "tessera_url"}
    if unknown:
        raise ConfigError(f"unknown top-level keys {sorted(unknown)}; bots go in [[bots]] tables")
    tessera_url = _optional_str(document, "tessera_url", None)
    bots = document.get("bots")
    if not isinstance(bots, list) or not bots:
        raise ConfigError("no bots: add at least one [[bots]] table")
    configs: list[BotConfig] = []
    seen: set[str] = set()
    for index, entry in enumerate(bots):
        if not isinstance(entry, dict):
            raise ConfigError(f"entry {index + 1} of bots is not a table")
        config = _bot(entry, index, env, base, tessera_url)
        if config.id in seen:
            raise ConfigError("appears twice in the file", bot=config.id, field="id")
        seen.add(config.id)
        configs.append(config)
    return configs


def _bot(
    entry: Mapping[str, Any], index: int, env: Mapping[str, str], base: Path, tessera_url: str | None
) -> BotConfig:
    bot_id = entry.get("id")
    if not isinstance(bot_id, str) or not s.is_token(bot_id):
        raise ConfigError(
            f"bot {index + 1} needs an id of letters, digits, '_' and '-' (at most 64), not {bot_id!r}", field="id"
        )
    for secret in _SECRET_KEYS:
        if secret in entry:
            raise ConfigError(
                f"secrets may not be written in the bots file; use {secret}_env (an environment variable) "
                f"or {secret}_file (a file) instead",
                bot=bot_id,
                field=secret,
            )
    unknown = set(entry) - _BOT_KEYS
    if unknown:
        raise ConfigError(f"unknown keys {sorted(unknown)}", bot=bot_id)
    platform_name = entry.get("platform")
    try:
        platform = BotPlatform(str(platform_name))
    except ValueError:
        raise ConfigError(f"must be telegram or discord, not {platform_name!r}", bot=bot_id, field="platform") from None
    capability = entry.get("capability")
    if capability not in CAPABILITIES:
        raise ConfigError(
            f"must be one of {', '.join(CAPABILITIES)}, not {capability!r}", bot=bot_id, field="capability"
        )
    for name in ("file_base_url", "local") if platform is BotPlatform.DISCORD else ("gateway_url",):
        if name in entry:
            raise ConfigError(f"is not a {platform.value} setting", bot=bot_id, field=name)
    return BotConfig(
        id=bot_id,
        platform=platform,
        capability=capability,
        token_source=_secret_source(entry, "token", bot_id, base),
        frontend_key_source=_secret_source(entry, "frontend_key", bot_id, base),
        defaults=_defaults(entry.get("defaults", {}), bot_id),
        api_base_url=_url(entry, platform, "api_base_url", env, bot_id),
        file_base_url=_url(entry, platform, "file_base_url", env, bot_id),
        gateway_url=_url(entry, platform, "gateway_url", env, bot_id),
        local=platform is BotPlatform.TELEGRAM and _local(entry, env, bot_id),
        tessera_url=_optional_str(entry, "tessera_url", bot_id) or tessera_url,
        flood_per_minute=_positive_int(entry, "flood_per_minute", 6, bot_id),
        flood_burst=_positive_int(entry, "flood_burst", 3, bot_id),
    )


def _secret_source(entry: Mapping[str, Any], name: str, bot_id: str, base: Path) -> Secret:
    env, file = entry.get(f"{name}_env"), entry.get(f"{name}_file")
    if name == "frontend_key" and env is None and file is None:
        return Secret(issued=True)  # `tessera up` issues it and keeps it in its data directory
    if (env is None) == (file is None):
        raise ConfigError(f"give exactly one of {name}_env and {name}_file", bot=bot_id, field=f"{name}_env")
    if env is not None:
        if not isinstance(env, str) or not env:
            raise ConfigError("must name an environment variable", bot=bot_id, field=f"{name}_env")
        return Secret(env=env)
    if not isinstance(file, str) or not file:
        raise ConfigError("must be a file's path", bot=bot_id, field=f"{name}_file")
    return Secret(file=base / Path(file).expanduser())


def _defaults(value: object, bot_id: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError("must be a table ([bots.defaults])", bot=bot_id, field="defaults")
    unknown = set(value) - DEFAULT_KEYS
    if unknown:
        raise ConfigError(
            f"unknown keys {sorted(unknown)} (known: {', '.join(sorted(DEFAULT_KEYS))})", bot=bot_id, field="defaults"
        )
    return dict(value)


def _url(entry: Mapping[str, Any], platform: BotPlatform, name: str, env: Mapping[str, str], bot_id: str) -> str | None:
    value = _optional_str(entry, name, bot_id)
    if value is None:
        variable = PLATFORM_URL_ENV.get((platform.value, name))
        value = (env.get(variable) or None) if variable else None
    if value is not None and not value.startswith(("http://", "https://", "ws://", "wss://")):
        raise ConfigError(f"{value!r} is not an http(s):// or ws(s):// URL", bot=bot_id, field=name)
    return value


def _local(entry: Mapping[str, Any], env: Mapping[str, str], bot_id: str) -> bool:
    value = entry.get("local")
    if value is None:
        return env.get(TELEGRAM_LOCAL_ENV, "").strip().lower() in ("1", "true", "yes")
    if not isinstance(value, bool):
        raise ConfigError("must be true or false", bot=bot_id, field="local")
    return value


def _optional_str(entry: Mapping[str, Any], name: str, bot_id: str | None) -> str | None:
    value = entry.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError("must be a non-empty string", bot=bot_id, field=name)
    return value


def _positive_int(entry: Mapping[str, Any], name: str, default: int, bot_id: str) -> int:
    value = entry.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError("must be a whole number of at least 1", bot=bot_id, field=name)
    return value
