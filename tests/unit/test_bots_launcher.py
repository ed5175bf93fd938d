"""The launcher and the bots: `tessera up` starts the bots service only when a bots file exists,
makes a NATS user per bot, and each bot logs in as its own."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from base.config import Settings
from bots import config as bots_config
from tessera import bots_setup, nats_auth
from tessera.cli import build_parser
from tessera.registry import Instance, by_name

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "bots.example.toml"


def test_up_runs_the_bots_only_when_the_file_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TESSERA_BOTS_FILE", raising=False)
    settings, spec = Settings(data_dir=tmp_path), by_name("bots")
    assert spec.instances(workers=1, host="h", settings=settings) == []
    assert bots_setup.roles(settings) == []
    shutil.copy(EXAMPLE, tmp_path / "bots.toml")
    assert spec.instances(workers=1, host="h", settings=settings) == [
        Instance(name="bots", args=("bots", "run"), role="")
    ]
    assert spec.nats_roles is not None
    roles = spec.nats_roles(settings)
    assert len(roles) == 12 and roles[0] == "bot:telegram:tg-img-1" and roles[-1] == "bot:discord:dc-vid-3"


def test_each_bot_logs_in_as_its_own_nats_user_when_it_has_one(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    bots = bots_config.load(EXAMPLE, environ={})
    credentials = nats_auth.Credentials(nats_auth.credentials_file(settings))
    credentials.ensure(["bot:telegram:tg-img-1"])
    server = "nats://127.0.0.1:4222"
    url = bots_setup.bot_nats_url(settings, server, bots[0])
    assert url == f"nats://bot-telegram-tg-img-1:{credentials.passwords['bot:telegram:tg-img-1']}@127.0.0.1:4222"
    assert bots_setup.bot_nats_url(settings, server, bots[1]) == server  # no user of its own: the server as given


def test_the_cli_runs_and_checks_the_bots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["bots", "run", "--bot", "tg-img-1", "--file", "x.toml"])
    assert (args.command, args.action, args.bot, args.file) == ("bots", "run", "tg-img-1", "x.toml")
    assert build_parser().parse_args(["bots", "check"]).action == "check"
    monkeypatch.setenv("TESSERA_DATA_DIR", str(tmp_path))
    with pytest.raises(SystemExit, match="no bot 'tg-img-9' in the bots file"):
        bots_setup.configs(Settings(data_dir=tmp_path), str(EXAMPLE), "tg-img-9")
    with pytest.raises(SystemExit, match="does not exist"):
        bots_setup.configs(Settings(data_dir=tmp_path))
    assert [c.id for c in bots_setup.configs(Settings(data_dir=tmp_path), str(EXAMPLE), "dc-vid-2")] == ["dc-vid-2"]
