"""The launcher's side of the bots: where the bots file is, each bot's NATS user and Tessera's API,
and `tessera bots check`.

Each bot logs in to NATS as its own user, `bot:<platform>:<id>` (it may read only its own
completions and progress). `tessera up` makes those users when the bots file exists, and `tessera
nats authorization --bot <platform>:<id>` prints them for an external server; both keep the
passwords in the credentials file, where `bot_nats_url` finds them. A bot without a user there
uses TESSERA_NATS_URL as it is (a development server without users, say).

A bot whose entry names no frontend key (neither `frontend_key_env` nor `frontend_key_file`) uses
the one `tessera up` issues it: once, before the bots start, kept in `<data dir>/bot-keys/` (0600)
and read from there by `tessera bots run` and `tessera bots check` (`issued_key_file`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from base.config import Settings
from bots import config as bots_config
from bots.config import BotConfig, ConfigError
from tessera import nats_auth, runtime

log = logging.getLogger(__name__)


def bots_file(settings: Settings, path: str | None = None) -> Path:
    """The bots file: `path`, else TESSERA_BOTS_FILE, else `<data dir>/bots.toml`."""
    return Path(path) if path else bots_config.default_path(settings.data_dir)


def issued_key_file(settings: Settings, config: BotConfig) -> Path:
    """Where `tessera up` keeps the frontend key it issued a bot whose entry names none."""
    return settings.data_dir / "bot-keys" / f"{config.frontend}-{config.id}.key"


def load(settings: Settings, path: str | Path | None = None) -> list[BotConfig]:
    """The bots file's bots, an issued frontend key read from its file in the data directory;
    ConfigError as `bots.config.load`."""
    found = bots_config.load(bots_file(settings, str(path) if path else None))
    return [
        dataclasses.replace(c, frontend_key_source=bots_config.Secret(file=issued_key_file(settings, c), issued=True))
        if c.frontend_key_source.issued
        else c
        for c in found
    ]


async def issue_keys(settings: Settings, nats_url: str, database_url: str) -> list[str]:
    """What `tessera up` does before it starts the bots: issue each bot whose entry names no frontend
    key its key, once (a key already in the data directory is kept); the ids of the bots issued one.
    A bots file that cannot be read issues nothing (the bots process says what is wrong)."""
    from tessera.admin import create_frontend_key

    try:
        found = load(settings)
    except ConfigError:
        return []
    issued = []
    for config in found:
        file = config.frontend_key_source.file
        if not config.frontend_key_source.issued or file is None or config.frontend_key_source.read():
            continue
        key = await create_frontend_key(nats_url, database_url, frontend=config.frontend, bot_id=config.id)
        file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key + "\n")
        log.info("issued bot %s its frontend key (%s)", config.id, file)
        issued.append(config.id)
    return issued


def configs(settings: Settings, path: str | None = None, only: str | None = None) -> list[BotConfig]:
    """The bots to run (all, or the one `only` names); SystemExit with the file's error."""
    try:
        found = load(settings, path)
    except ConfigError as exc:
        raise SystemExit(f"tessera: {exc}") from None
    if only is None:
        return found
    chosen = [c for c in found if c.id == only]
    if not chosen:
        raise SystemExit(f"tessera: no bot {only!r} in the bots file (it has {', '.join(c.id for c in found)})")
    return chosen


def role(config: BotConfig) -> str:
    """The bot's NATS role: `bot:<platform>:<id>`."""
    return f"bot:{config.frontend}:{config.id}"


def roles(settings: Settings) -> list[str]:
    """The NATS roles of every bot of the bots file (none when it is missing or wrong: the bots
    process then says what is wrong)."""
    try:
        return [role(c) for c in bots_config.load(bots_file(settings))]
    except ConfigError:
        return []


def nats_url(settings: Settings) -> str:
    """The NATS server the bots reach: TESSERA_NATS_URL, else the running `tessera up`'s."""
    return os.environ.get("TESSERA_NATS_URL") or runtime.urls(settings)[0]


def bot_nats_url(settings: Settings, server_url: str, config: BotConfig) -> str:
    """The URL the bot logs in with: its own user when the credentials file has one, else `server_url`."""
    credentials = nats_auth.Credentials(nats_auth.credentials_file(settings))
    if role(config) in credentials.passwords:
        return credentials.url(server_url, role(config))
    return server_url


def api_url(settings: Settings) -> str:
    """Tessera's API: TESSERA_API_URL, else the running `tessera up`'s, else TESSERA_HTTP_HOST:PORT."""
    if os.environ.get("TESSERA_API_URL"):
        return os.environ["TESSERA_API_URL"]
    path = runtime.runtime_file(settings)
    if path.exists():
        found = json.loads(path.read_text()).get("api_url")
        if isinstance(found, str) and found:
            return found
    return f"http://{settings.http_host}:{settings.http_port}"


@dataclass(frozen=True)
class Finding:
    bot: str | None
    ok: bool
    message: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.bot or 'file'}: {self.message}"


async def check(settings: Settings, path: str | None = None) -> list[Finding]:
    """What `tessera bots check` reports: the file parses; each bot's token and key are where the
    file says; each frontend key is accepted by the API (a read of /api/v1/user/me acting for a
    user of its platform, which registers nobody)."""
    file = bots_file(settings, path)
    try:
        found = load(settings, file)
    except ConfigError as exc:
        return [Finding(None, False, str(exc))]
    findings = [Finding(None, True, f"{file}: {len(found)} bots")]
    default_api = api_url(settings)
    for config in found:
        findings += await _check_bot(config, config.tessera_url or default_api)
    return findings


async def _check_bot(config: BotConfig, api: str) -> list[Finding]:
    import httpx  # here: the CLI imports this module to build its parser

    from gateway.client import ApiError, TesseraClient

    out = []
    try:
        config.token()
        out.append(Finding(config.id, True, f"token found in {config.token_source.describe()}"))
    except ConfigError as exc:
        out.append(Finding(config.id, False, str(exc)))
    try:
        key = config.frontend_key()
    except ConfigError as exc:
        return [*out, Finding(config.id, False, str(exc))]
    try:
        async with TesseraClient(api, key, user_ref=config.user_ref("0"), timeout=10) as client:
            await client.me()
        out.append(Finding(config.id, True, f"frontend key accepted by {api}"))
    except ApiError as exc:
        out.append(Finding(config.id, False, f"frontend key refused by {api}: {exc.code} {exc.detail}"))
    except httpx.HTTPError as exc:
        out.append(Finding(config.id, False, f"cannot reach Tessera at {api}: {exc}"))
    return out


def run_check(settings: Settings, path: str | None = None) -> bool:
    """Print the findings; True when all are fine."""
    findings = asyncio.run(check(settings, path))
    for finding in findings:
        print(finding.line())
    return all(f.ok for f in findings)


def add_check_command(group: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`tessera bots check [--file PATH]`, exiting 1 when anything is wrong."""
    parser = group.add_parser("check", help="check the bots file, each bot's token and key, and each key with the API")
    parser.add_argument(
        "--file", default=None, help="the bots file (default: TESSERA_BOTS_FILE, or bots.toml in the data directory)"
    )

    def cmd_check(args: argparse.Namespace) -> None:
        if not run_check(Settings.from_env(), args.file):
            raise SystemExit(1)

    parser.set_defaults(func=cmd_check)
