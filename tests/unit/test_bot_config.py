"""The bots file: twelve bots from the example, and errors that name the bot and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bots import config as bots_config
from bots import telegram
from bots.config import BotPlatform, ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "bots.example.toml"


def one(**fields: Any) -> dict[str, Any]:
    bot = {
        "id": "tg-img-1",
        "platform": "telegram",
        "capability": "image",
        "token_env": "TG_TOKEN",
        "frontend_key_env": "TG_KEY",
    }
    bot.update(fields)
    return {"bots": [{k: v for k, v in bot.items() if v is not None}]}


def test_the_example_file_lists_the_twelve_bots_of_the_product() -> None:
    bots = bots_config.load(EXAMPLE, environ={})
    assert [b.id for b in bots] == [f"{p}-{c}-{n}" for p in ("tg", "dc") for c in ("img", "vid") for n in (1, 2, 3)]
    assert {b.platform for b in bots} == {BotPlatform.TELEGRAM, BotPlatform.DISCORD}
    assert all(b.capability == ("image" if "img" in b.id else "video") for b in bots)
    assert all(b.token_source.env and b.frontend_key_source.env for b in bots)


def test_secrets_are_read_from_their_variable_or_file_only_when_asked(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("tsk_front\n")
    [bot] = bots_config.parse(one(frontend_key_env=None, frontend_key_file="key"), environ={}, base=tmp_path)
    assert bot.token({"TG_TOKEN": " 123:abc "}) == "123:abc" and bot.frontend_key() == "tsk_front"
    with pytest.raises(
        ConfigError, match="bot 'tg-img-1', field 'token_env': no token in environment variable TG_TOKEN"
    ):
        bot.token({})
    (tmp_path / "key").unlink()
    with pytest.raises(ConfigError, match="field 'frontend_key_file'"):
        bot.frontend_key()
    assert bot.user_ref(42) == "telegram:42" and bot.frontend == "telegram"


def test_platform_addresses_come_from_the_bot_or_the_environment() -> None:
    env = {
        "TESSERA_TELEGRAM_API_URL": "http://127.0.0.1:9000/bot",
        "TESSERA_DISCORD_GATEWAY_URL": "ws://127.0.0.1:9001",
    }
    [tg] = bots_config.parse(one(file_base_url="http://files.local/file/bot"), environ=env)
    assert (tg.api_base_url, tg.file_base_url, tg.gateway_url) == (
        "http://127.0.0.1:9000/bot",
        "http://files.local/file/bot",
        None,
    )
    [dc] = bots_config.parse(
        one(id="dc-img-1", platform="discord", api_base_url="http://127.0.0.1:9002/api/v10"), environ=env
    )
    assert (dc.api_base_url, dc.gateway_url) == ("http://127.0.0.1:9002/api/v10", "ws://127.0.0.1:9001")
    document = {**one(), "tessera_url": "http://tessera.local:8000"}
    assert bots_config.parse(document, environ={})[0].tessera_url == "http://tessera.local:8000"


def test_a_local_bot_api_server_is_a_telegram_bot_setting_with_the_environment_as_fallback() -> None:
    assert bots_config.parse(one(), environ={})[0].local is False
    assert bots_config.parse(one(local=True), environ={})[0].local is True
    everyone = {"TESSERA_TELEGRAM_LOCAL": "1"}
    assert bots_config.parse(one(), environ=everyone)[0].local is True
    assert bots_config.parse(one(local=False), environ=everyone)[0].local is False  # the bot's own word wins
    assert bots_config.parse(one(), environ={"TESSERA_TELEGRAM_LOCAL": "0"})[0].local is False
    [dc] = bots_config.parse(one(id="dc-img-1", platform="discord"), environ=everyone)
    assert dc.local is False  # a Telegram setting only
    [local, remote] = bots_config.parse(
        {"bots": [one(local=True)["bots"][0], one(id="tg-img-2", local=False)["bots"][0]]}, environ={}
    )
    assert telegram.create(local, "123:abc").upload_limit == telegram.LOCAL_UPLOAD_LIMIT == 2_000_000_000
    assert telegram.create(remote, "123:abc").upload_limit == telegram.UPLOAD_LIMIT == 50_000_000


@pytest.mark.parametrize(
    ("document", "says"),
    [
        (one(token="123:abc"), "bot 'tg-img-1', field 'token': secrets may not be written in the bots file"),
        (one(frontend_key="tsk"), "field 'frontend_key': secrets may not"),
        (one(platform="matrix"), "field 'platform': must be telegram or discord"),
        (one(capability="stt"), "field 'capability': must be one of image, video, text, tts"),
        (one(token_env=None), "field 'token_env': give exactly one of token_env and token_file"),
        (one(token_file="/x"), "give exactly one of token_env and token_file"),
        (one(id="tg img"), "field 'id'"),
        (one(colour="red"), "bot 'tg-img-1': unknown keys ['colour']"),
        (one(defaults={"size": "1x1", "style": "noir"}), "field 'defaults': unknown keys ['style']"),
        (one(gateway_url="ws://x"), "field 'gateway_url': is not a telegram setting"),
        (one(local="yes"), "bot 'tg-img-1', field 'local': must be true or false"),
        (one(id="dc-img-1", platform="discord", local=True), "field 'local': is not a discord setting"),
        (one(api_base_url="ftp://x"), "field 'api_base_url': 'ftp://x' is not"),
        (one(flood_per_minute=0), "field 'flood_per_minute'"),
        ({"bots": []}, "no bots"),
        ({"bot": [{}]}, "unknown top-level keys"),
        ({"bots": one()["bots"] * 2}, "bot 'tg-img-1', field 'id': appears twice"),
    ],
)
def test_a_wrong_file_names_the_bot_and_the_field(document: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError) as error:
        bots_config.parse(document, environ={})
    assert says in str(error.value)


def test_a_missing_or_broken_file_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        bots_config.load(tmp_path / "bots.toml")
    (tmp_path / "bots.toml").write_text("[[bots]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        bots_config.load(tmp_path / "bots.toml")
    monkeypatch.delenv("TESSERA_BOTS_FILE", raising=False)
    assert bots_config.default_path(tmp_path) == tmp_path / "bots.toml"
    monkeypatch.setenv("TESSERA_BOTS_FILE", "/etc/tessera/bots.toml")
    assert bots_config.default_path(tmp_path) == Path("/etc/tessera/bots.toml")
