"""The Telegram bot end to end: real python-telegram-bot against the fake Bot API, the real platform
(gateway, scheduler, projector, a worker drawing images with the diagnostic engine), real NATS and
PostgreSQL. What the tests read is what the user's chat shows."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from itertools import pairwise
from pathlib import Path

import pytest

from bots.config import BotConfig, BotPlatform, Secret
from bots.limits import EditThrottle
from bots.reply import Delivery, ReplyContext
from bots.runtime import BotRuntime
from bots.telegram import TelegramBot, create
from streams.messages import DefinePlan
from tessera.admin import create_user, define_plan
from tests.conftest import REPO, Platform
from tests.fake_telegram import FakeTelegram, Sent, image_size, serve
from worker_node.engines.base import JobContext, JobInput, Output
from worker_node.engines.diagnostic import DiagnosticImageEngine
from worker_node.service import Worker

BOT_ID = "tg-img-1"
ADA = 601


class GatedImageEngine:
    """The diagnostic image engine behind a gate the test opens, reporting sampler steps while it
    waits: a stand-in for a GPU that takes its time (what cannot run here)."""

    name = "diagnostic-image"
    capabilities: tuple[str, ...] = ("image",)
    models: tuple[str, ...] = ("diagnostic-image",)
    slots = 4

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started = asyncio.Event()
        self._draw = DiagnosticImageEngine()

    async def run(self, job: JobInput, ctx: JobContext) -> list[Output]:
        self.started.set()
        step = 0
        while not self.gate.is_set():
            step = min(step + 1, 19)
            await ctx.progress(step / 20, f"step {step} of 20", None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.gate.wait(), 0.3)
        return await self._draw.run(job, ctx)

    async def close(self) -> None:
        await self._draw.close()


@pytest.fixture
async def telegram() -> AsyncIterator[tuple[FakeTelegram, str]]:
    fake = FakeTelegram()
    async with serve(fake) as url:
        yield fake, url


@pytest.fixture
async def engine(platform: Platform) -> GatedImageEngine:
    engine = GatedImageEngine()
    worker = Worker(
        nats_url=platform.nats_url,
        worker_id="w-image",
        engines=[engine],
        heartbeat_interval_s=platform.settings.heartbeat_interval_s,
        started_grace_s=0.0,
    )
    await platform.start("worker:w-image", worker)
    await asyncio.wait_for(worker.ready.wait(), 10)
    return engine


def bot_config(url: str) -> BotConfig:
    return BotConfig(
        id=BOT_ID,
        platform=BotPlatform.TELEGRAM,
        capability="image",
        token_source=Secret(env="TG_IMG_1_TOKEN"),
        frontend_key_source=Secret(env="TG_IMG_1_KEY"),
        defaults={"model": "diagnostic-image", "size": "512x512"},
        api_base_url=f"{url}/bot",
        file_base_url=f"{url}/file/bot",
    )


@contextlib.asynccontextmanager
async def running_bot(platform: Platform, url: str, token: str) -> AsyncIterator[TelegramBot]:
    """The bot in this process: serving its users and delivering its results, as `tessera bots run` does."""
    config = bot_config(url)
    key = await platform.frontend_key("telegram", BOT_ID)
    bot = create(config, token)
    async with BotRuntime(config, api_url=platform.api_url, nats_url=platform.nats_url, frontend_key=key) as runtime:
        runtime.edits = EditThrottle(min_interval_s=1.0)
        tasks = [asyncio.create_task(bot.run(runtime)), asyncio.create_task(runtime.completions(bot.deliver))]
        try:
            yield bot
        finally:
            await bot.stop()
            await runtime.stop()
            await asyncio.wait_for(asyncio.gather(*tasks), 20)


def shown_texts(message: Sent) -> list[str]:
    """Every text a message has shown, oldest first."""
    return [*message.edits, message.text or ""]


def photos(fake: FakeTelegram, chat_id: int) -> list[Sent]:
    return [m for m in fake.messages(chat_id, from_bot=True) if m.kind == "photo"]


async def test_an_image_request_becomes_a_photo_after_its_progress_message_moved(
    platform: Platform, engine: GatedImageEngine, telegram: tuple[FakeTelegram, str]
) -> None:
    fake, url = telegram
    token = fake.add_bot("tessera_img_bot")
    fake.user(ADA, "Ada")
    async with running_bot(platform, url, token):
        fake.user_says(token, ADA, "/start")
        welcome = await fake.wait_for(lambda: next(iter(fake.messages(ADA, from_bot=True)), None))
        assert "Free plan" in (welcome.text or "") and "/image" in (welcome.text or "")
        fake.user_says(token, ADA, "/image a lighthouse at dusk --ar 16:9 --seed 7")
        progress = await fake.wait_for(
            lambda: next((m for m in fake.messages(ADA, from_bot=True) if "% (step" in (m.text or "")), None)
        )
        assert progress.buttons and progress.buttons[0][0] == "Cancel"
        engine.gate.set()
        (photo,) = await fake.wait_for(lambda: photos(fake, ADA) or None)
        await fake.wait_for(lambda: (progress.text or "").startswith("Done"))
    history = shown_texts(progress)
    assert history[0] == "Sending your request..." and history[1].startswith("Queued.")
    assert any(t.startswith("Working on it") and "%" in t for t in history), history
    assert all(a != b for a, b in pairwise(history))  # never the same text twice in a row
    assert progress.buttons == []  # the last word has no Cancel button
    assert photo.file is not None and image_size(photo.file.data) == (704, 384)  # 16:9 near 512x512's area
    assert photo.reply_to is None  # a private chat: no reply needed
    assert "setMyCommands" in [c.method for c in fake.calls]


async def test_in_a_group_the_bot_replies_to_the_user_and_cancel_by_button_ends_the_job(
    platform: Platform, engine: GatedImageEngine, telegram: tuple[FakeTelegram, str]
) -> None:
    fake, url = telegram
    token = fake.add_bot("tessera_img_bot")
    fake.user(ADA, "Ada")
    fake.group(-1001, "fans")
    async with running_bot(platform, url, token):
        asked = fake.user_says(token, -1001, "/image@tessera_img_bot a cat in a hat", user_id=ADA)
        progress = await fake.wait_for(
            lambda: next((m for m in fake.messages(-1001, from_bot=True) if m.buttons), None)
        )
        assert progress.reply_to is asked
        await asyncio.wait_for(engine.started.wait(), 10)
        query = fake.press(token, progress, progress.buttons[0][1], user_id=ADA)
        await fake.wait_for(lambda: (progress.text or "").startswith("Cancelled"))
        answered = await fake.wait_for(lambda: fake.bots[token].callback_queries[query]["answered"])
        assert answered
    assert not photos(fake, -1001) and progress.buttons == []


async def test_a_user_without_tokens_reads_when_they_come_back(
    platform: Platform, engine: GatedImageEngine, telegram: tuple[FakeTelegram, str]
) -> None:
    fake, url = telegram
    token = fake.add_bot("tessera_img_bot")
    fake.user(ADA, "Ada")
    await define_plan(
        platform.nats_url,
        platform.database_url,
        DefinePlan(
            command_id=uuid.uuid4(),
            tier="empty",
            name="Empty",
            daily_token_limit=0,
            requests_per_minute=60,
            max_concurrent_jobs=1,
            max_queued_jobs=5,
            max_resolution=2048,
            allowed_models=["diagnostic-image"],
            priority=0,
            price_cents=0,
        ),
    )
    await create_user(platform.nats_url, platform.database_url, platform="telegram", user_id=str(ADA), plan="empty")
    async with running_bot(platform, url, token):
        fake.user_says(token, ADA, "/image a red fox")
        refused = await fake.wait_for(
            lambda: next((m for m in fake.messages(ADA, from_bot=True) if "renew" in (m.text or "")), None)
        )
    assert "not enough for this" in (refused.text or "") and "UTC" in (refused.text or "")
    assert "/plans" in (refused.text or "") and refused.buttons == []
    assert not engine.started.is_set()


async def test_a_429_on_the_photo_is_waited_out_and_the_photo_sent_once(
    platform: Platform, engine: GatedImageEngine, telegram: tuple[FakeTelegram, str]
) -> None:
    fake, url = telegram
    token = fake.add_bot("tessera_img_bot")
    fake.user(ADA, "Ada")
    fake.too_many_requests("sendPhoto", 2, chat_id=ADA)
    engine.gate.set()
    async with running_bot(platform, url, token):
        fake.user_says(token, ADA, "/image a quick sketch")
        (photo,) = await fake.wait_for(lambda: photos(fake, ADA) or None)
        await asyncio.sleep(1.0)
    sends = fake.calls_of("sendPhoto")
    assert [c.error_code for c in sends] == [429, 0]
    assert sends[1].at - sends[0].at >= 2.0  # it waited the retry_after Telegram gave
    assert len(photos(fake, ADA)) == 1 and photo.file is not None


async def test_a_user_who_blocked_the_bot_is_acknowledged_once_and_not_retried(
    platform: Platform, engine: GatedImageEngine, telegram: tuple[FakeTelegram, str]
) -> None:
    fake, url = telegram
    token = fake.add_bot("tessera_img_bot")
    fake.user(ADA, "Ada")
    async with running_bot(platform, url, token):
        fake.user_says(token, ADA, "/image a goodbye card")
        await fake.wait_for(lambda: any(m.buttons for m in fake.messages(ADA, from_bot=True)))
        fake.block(ADA)
        engine.gate.set()
        await fake.wait_for(lambda: fake.calls_of("sendPhoto") or None)
        await asyncio.sleep(3.0)  # a retried notification would come back within ack_wait's nak delay
    assert [c.error_code for c in fake.calls_of("sendPhoto")] == [403]
    assert not photos(fake, ADA)


def bot_process(tmp_path: Path, platform: Platform, url: str, token: str, key: str) -> subprocess.Popen[bytes]:
    bots_file = tmp_path / "bots.toml"
    bots_file.write_text(
        f"""
[[bots]]
id = "{BOT_ID}"
platform = "telegram"
capability = "image"
token_env = "TG_IMG_1_TOKEN"
frontend_key_env = "TG_IMG_1_KEY"
api_base_url = "{url}/bot"
file_base_url = "{url}/file/bot"
[bots.defaults]
model = "diagnostic-image"
size = "512x512"
"""
    )
    env = {
        **os.environ,
        "TESSERA_NATS_URL": platform.nats_url,
        "TESSERA_DATABASE_URL": platform.database_url,
        "TESSERA_API_URL": platform.api_url,
        "TESSERA_DATA_DIR": str(tmp_path / "data"),
        "TESSERA_SIDE_PORT": "0",
        "TG_IMG_1_TOKEN": token,
        "TG_IMG_1_KEY": key,
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-m", "tessera.cli", "bots", "run", "--file", str(bots_file), "--bot", BOT_ID]
    return subprocess.Popen(command, env=env, cwd=REPO)


async def test_a_bot_killed_mid_job_edits_the_same_message_and_sends_the_photo_once_when_back(
    platform: Platform, engine: GatedImageEngine, telegram: tuple[FakeTelegram, str], tmp_path: Path
) -> None:
    fake, url = telegram
    token = fake.add_bot("tessera_img_bot")
    fake.user(ADA, "Ada")
    key = await platform.frontend_key("telegram", BOT_ID)
    first = bot_process(tmp_path, platform, url, token, key)
    try:
        fake.user_says(token, ADA, "/image a phoenix")
        progress = await fake.wait_for(
            lambda: next((m for m in fake.messages(ADA, from_bot=True) if m.buttons), None), 60
        )
        await asyncio.wait_for(engine.started.wait(), 20)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    engine.gate.set()  # the job completes while no bot runs
    await asyncio.sleep(1.0)
    assert not photos(fake, ADA)
    second = bot_process(tmp_path, platform, url, token, key)
    try:
        (photo,) = await fake.wait_for(lambda: photos(fake, ADA) or None, 60)
        await fake.wait_for(lambda: (progress.text or "").startswith("Done"), 20)
        await asyncio.sleep(2.0)
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(20)
        except subprocess.TimeoutExpired:
            second.kill()
            second.wait(10)
    assert len(photos(fake, ADA)) == 1 and photo.file is not None
    bot_messages = fake.messages(ADA, from_bot=True)
    assert [m.kind for m in bot_messages] == ["text", "photo"]  # one progress message, edited; one photo
    assert len([c for c in fake.calls_of("sendMessage") if c.error_code == 0]) == 1


async def test_a_result_too_large_for_a_photo_goes_as_a_document_and_one_too_large_to_upload_as_a_link(
    telegram: tuple[FakeTelegram, str],
) -> None:
    fake, url = telegram
    token = fake.add_bot("tessera_img_bot")
    fake.user(ADA, "Ada")
    bot = create(bot_config(url), token)
    reply = ReplyContext(chat_id=ADA, message_id=None)
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * 10_000_000  # past the photo limit, within the upload limit
    common = {"artifact_id": uuid.uuid4(), "kind": "image", "content_type": "image/png", "filename": "big.png"}
    async with bot.app:
        await bot._post(reply, Delivery(**common, size_bytes=len(big), data=big))
        link = "http://tessera.example/api/v1/artifacts/x?expires=1&signature=s"
        await bot._post(reply, Delivery(**common, size_bytes=60_000_000, url=link))
    document, linked = fake.messages(ADA, from_bot=True)
    assert document.kind == "document" and document.file is not None and document.file.data == big
    assert linked.kind == "text" and link in (linked.text or "") and "60.0 MB" in (linked.text or "")
    assert not fake.calls_of("sendPhoto")
