"""A bot whose entry names no frontend key uses the one `tessera up` issues it and keeps in its
data directory; `tessera up` starts the bots only after issuing those keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from base.config import Settings
from bots import config as bots_config
from bots.config import ConfigError
from tessera import bots_setup
from tessera.registry import by_name

FILE = """
[[bots]]
id = "tg-img-1"
platform = "telegram"
capability = "image"
token_env = "TG_IMG_1_TOKEN"

[[bots]]
id = "dc-img-1"
platform = "discord"
capability = "image"
token_env = "DC_IMG_1_TOKEN"
frontend_key_env = "DC_IMG_1_KEY"
"""


def test_a_bot_without_a_frontend_key_reads_the_one_issued_to_it(tmp_path: Path) -> None:
    (tmp_path / "bots.toml").write_text(FILE)
    issued, named = bots_config.load(tmp_path / "bots.toml", environ={})
    assert issued.frontend_key_source.issued and issued.frontend_key_source.read() is None
    assert not named.frontend_key_source.issued and named.frontend_key_source.env == "DC_IMG_1_KEY"

    settings = Settings(data_dir=tmp_path / "data")
    issued, named = bots_setup.load(settings, tmp_path / "bots.toml")
    key_file = tmp_path / "data" / "bot-keys" / "telegram-tg-img-1.key"
    assert issued.frontend_key_source.file == key_file == bots_setup.issued_key_file(settings, issued)
    assert named.frontend_key_source.env == "DC_IMG_1_KEY"  # a key the file names is left alone
    with pytest.raises(ConfigError, match=r"field 'frontend_key_file': no frontend_key in file .*tessera up` issues"):
        issued.frontend_key()
    key_file.parent.mkdir(parents=True)
    key_file.write_text("tsk_front_abc\n")
    assert issued.frontend_key() == "tsk_front_abc"


def test_tessera_up_issues_the_keys_before_it_starts_the_bots() -> None:
    assert by_name("bots").prepare is not None
    assert all(by_name(name).prepare is None for name in ("scheduler", "projector", "gateway", "worker"))


async def test_a_file_that_cannot_be_read_issues_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TESSERA_BOTS_FILE", raising=False)
    (tmp_path / "bots.toml").write_text("[[bots]\n")
    settings = Settings(data_dir=tmp_path)
    assert await bots_setup.issue_keys(settings, "nats://127.0.0.1:1", "postgresql://127.0.0.1:1/x") == []
