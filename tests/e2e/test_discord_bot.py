"""The Discord bot end to end: the real discord.py client against the fake Discord, the real platform
behind it (gateway, scheduler, projector, a diagnostic image worker), nothing mocked."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest

from bots import discord as discord_bot
from bots.config import BotConfig, BotPlatform, Secret
from bots.platform import PlatformFactory
from bots.service import BotSupervisor
from tests.conftest import REPO, Platform
from tests.fake_discord import FakeDiscord, Interaction, SeenMessage
from tests.scripted_worker import ScriptedWorker

PNG = b"\x89PNG\r\n\x1a\n"
DEFAULTS = {"model": "diagnostic-image", "size": "256x256"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    fake = await FakeDiscord().start()
    try:
        yield fake
    finally:
        await fake.close()


@pytest.fixture
async def bot_config(platform: Platform, fake: FakeDiscord, monkeypatch: pytest.MonkeyPatch) -> BotConfig:
    monkeypatch.setenv("DC_IMG_TOKEN", fake.token)
    monkeypatch.setenv("DC_IMG_KEY", await platform.frontend_key("discord", "dc-img-1"))
    return BotConfig(
        id="dc-img-1",
        platform=BotPlatform.DISCORD,
        capability="image",
        token_source=Secret(env="DC_IMG_TOKEN"),
        frontend_key_source=Secret(env="DC_IMG_KEY"),
        defaults=DEFAULTS,
        api_base_url=fake.rest_base,
        gateway_url=fake.gateway_url,
    )


@contextlib.asynccontextmanager
async def running(
    platform: Platform, fake: FakeDiscord, config: BotConfig, factory: PlatformFactory = discord_bot.create
) -> AsyncIterator[BotSupervisor]:
    """The bot as `tessera bots run` runs it (its supervisor), until the block ends."""
    supervisor = BotSupervisor(config, api_url=platform.api_url, nats_url=platform.nats_url, factory=factory)
    identified = fake.identified
    task = asyncio.create_task(supervisor.run())
    try:
        await fake.wait_for(lambda: fake.identified > identified and fake.commands and supervisor.ready, timeout=30)
        yield supervisor
    finally:
        await supervisor.stop()
        await asyncio.wait_for(task, 20)


async def kill(supervisor: BotSupervisor, fake: FakeDiscord) -> None:
    """As near a SIGKILL as one process gets: the socket dies without a close frame, the tasks are cancelled."""
    await fake.drop()
    for task in asyncio.all_tasks():
        if task.get_name() in (f"supervise-{supervisor.config.id}",) or task.get_name().startswith("bot-dc-img-1"):
            task.cancel()


async def image_worker(platform: Platform) -> None:
    await platform.start_worker("w-img", engines=("diagnostic-image",))


def no_repeats(message: SeenMessage) -> bool:
    """The bot never edited a message into what it already showed."""
    return message.identical_edits == 0


def done(interaction: Interaction) -> Callable[[], bool]:
    return lambda: (
        interaction.original is not None and interaction.original.content.startswith(("Done", "Cancelled", "Sorry"))
    )


async def test_imagine_becomes_an_attachment_after_a_queued_message(
    platform: Platform, fake: FakeDiscord, bot_config: BotConfig
) -> None:
    await image_worker(platform)
    async with running(platform, fake, bot_config):
        assert {c["name"] for c in fake.commands} == {"imagine", "me", "plans", "cancel", "help"}
        imagine = next(c for c in fake.commands if c["name"] == "imagine")
        assert [o["name"] for o in imagine["options"]][:2] == ["prompt", "model"]
        interaction = await fake.command("imagine", {"prompt": "a lighthouse at dusk", "seed": 7})
        await fake.wait_for(done(interaction), timeout=30)

    assert interaction.response_type == 5  # deferred within the 3 seconds
    message = interaction.original
    assert message is not None and fake.channel("700").messages == [message]
    assert message.history[0] == "" and message.history[1].startswith("Queued")  # "thinking...", then queued
    assert message.content.startswith("Done")
    assert len(message.attachments) == 1 and message.attachments[0].data.startswith(PNG)
    assert message.attachments[0].filename.endswith(".png")
    assert message.buttons() == []  # the Cancel button went with the result
    assert no_repeats(message)
    # The interaction's token worked from the job's reply_context, yet the log kept it sealed only.
    conn = await asyncpg.connect(platform.database_url)
    try:
        stored = await conn.fetchval("SELECT data::text FROM events WHERE type = 'JobSubmitted.v1'")
    finally:
        await conn.close()
    assert '"interaction_token": "sealed:' in stored and interaction.token not in stored


async def test_cancel_by_button(platform: Platform, fake: FakeDiscord, bot_config: BotConfig) -> None:
    worker = await ScriptedWorker(platform.nats_url, "w-slow", ["diagnostic-image"]).start()
    try:
        async with running(platform, fake, bot_config):
            interaction = await fake.command("imagine", {"prompt": "never finished"})
            await worker.wait_for(1)
            await fake.wait_for(lambda: interaction.original is not None and interaction.original.buttons())
            message = interaction.original
            assert message is not None
            button = message.buttons()[0]
            assert button["label"] == "Cancel"
            click = await fake.click(message, button["custom_id"])
            await fake.wait_for(done(interaction), timeout=30)
    finally:
        await worker.stop()
    assert click.response_type == 7  # the click updated the message (its button went)
    assert message.content.startswith("Cancelled") and message.buttons() == [] and not message.attachments
    assert no_repeats(message)


async def test_a_refusal_is_a_sentence(platform: Platform, fake: FakeDiscord, bot_config: BotConfig) -> None:
    async with running(platform, fake, bot_config):
        interaction = await fake.command("imagine", {"prompt": "a cat", "model": "flux-dev"})
        await fake.wait_for(lambda: interaction.original is not None and not interaction.original.loading)
    message = interaction.original
    assert message is not None and "flux-dev" in message.content and "plan" in message.content
    assert message.buttons() == [] and not message.attachments


async def test_the_bot_resumes_after_its_socket_drops(
    platform: Platform, fake: FakeDiscord, bot_config: BotConfig
) -> None:
    await image_worker(platform)
    async with running(platform, fake, bot_config):
        await fake.drop()
        interaction = await fake.command("imagine", {"prompt": "sent while the socket was down"})
        await fake.wait_for(done(interaction), timeout=30)
    assert fake.resumed >= 1 and fake.identified == 1
    assert interaction.original is not None and len(interaction.original.attachments) == 1


async def test_a_bot_killed_mid_job_delivers_the_result_once_after_its_restart(
    platform: Platform, fake: FakeDiscord, bot_config: BotConfig
) -> None:
    holder = await ScriptedWorker(platform.nats_url, "w-doomed", ["diagnostic-image"]).start()
    supervisor = BotSupervisor(
        bot_config, api_url=platform.api_url, nats_url=platform.nats_url, factory=discord_bot.create
    )
    task = asyncio.create_task(supervisor.run(), name=f"supervise-{bot_config.id}")
    await fake.wait_for(lambda: fake.identified and fake.commands and supervisor.ready, timeout=30)
    interaction = await fake.command("imagine", {"prompt": "across a restart"})
    await holder.wait_for(1)
    await fake.wait_for(lambda: interaction.original is not None and interaction.original.buttons())

    await kill(supervisor, fake)  # the bot dies with the job running
    await asyncio.gather(task, return_exceptions=True)
    await holder.crash()  # and so does its worker: the job is requeued to a real one, and completes
    await image_worker(platform)
    async with platform.client(await platform.frontend_key("discord", "dc-img-1")) as api:
        api.headers["Tessera-User-Ref"] = f"discord:{interaction.user_id}"
        job_id = (await api.get("/api/v1/jobs")).json()["jobs"][0]["job_id"]
        await platform.wait_status(api, job_id, {"COMPLETED"}, timeout=30)
    assert interaction.original is not None and not interaction.original.attachments  # nobody told the user yet

    async with running(platform, fake, bot_config):
        await fake.wait_for(done(interaction), timeout=30)
        await asyncio.sleep(1.0)  # time for a second delivery, were there one
    message = interaction.original
    assert fake.channel("700").messages == [message]  # the same message, no second one
    assert len(message.attachments) == 1 and message.attachments[0].data.startswith(PNG)
    assert sum(text.startswith("Done") for text in message.history) == 1


async def listed(platform: Platform, user_id: str) -> None:
    """Wait until the user's job shows in the API's job list (the projector's read model)."""
    async with platform.client(await platform.frontend_key("discord", "dc-img-1")) as api:
        api.headers["Tessera-User-Ref"] = f"discord:{user_id}"
        for _ in range(200):
            if (await api.get("/api/v1/jobs")).json()["jobs"]:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"discord:{user_id} has no job listed")


def short_window(config: BotConfig, token: str) -> discord_bot.DiscordBot:
    return discord_bot.DiscordBot(config, token, window_s=1.0)


async def test_after_the_token_window_the_result_is_posted_in_the_channel_or_given_up(
    platform: Platform, fake: FakeDiscord, bot_config: BotConfig
) -> None:
    fake.token_lifetime_s = 1.5  # the fake's interaction tokens expire too
    worker = await ScriptedWorker(platform.nats_url, "w-slow", ["diagnostic-image"], slots=2).start()
    try:
        async with running(platform, fake, bot_config, short_window):
            first = await fake.command("imagine", {"prompt": "slow"})
            second = await fake.command("imagine", {"prompt": "slower"}, channel_id="701", user_id="4343")
            dispatches = await worker.wait_for(2)
            await asyncio.sleep(1.6)
            fake.channel("701").forbidden = True  # the bot was removed from the second channel
            for dispatch in dispatches:
                await worker.finish(dispatch)
            await fake.wait_for(lambda: len(fake.channel("700").messages) == 2, timeout=30)
            await asyncio.sleep(2.5)  # a retried delivery would come after 1 s
    finally:
        await worker.stop()
    posted = fake.channel("700").messages[1]
    assert posted.webhook_id is None  # the bot's own token, not the interaction's
    assert posted.content.startswith(f"<@{first.user_id}> Done")
    assert [m for m in fake.channel("701").messages if m is not second.original] == []
    assert fake.requests.count(("POST", "/api/v10/channels/701/messages")) == 1  # undeliverable: not retried


async def test_a_result_larger_than_the_interaction_allows_is_a_link(
    platform: Platform, fake: FakeDiscord, bot_config: BotConfig
) -> None:
    await image_worker(platform)
    async with running(platform, fake, bot_config):
        interaction = await fake.command("imagine", {"prompt": "too big"}, attachment_size_limit=100)
        await fake.wait_for(done(interaction), timeout=30)
    message = interaction.original
    assert message is not None and not message.attachments
    assert "too large to send here" in message.content and "http" in message.content


async def test_me_plans_and_cancel_answer_only_the_user(
    platform: Platform, fake: FakeDiscord, bot_config: BotConfig
) -> None:
    worker = await ScriptedWorker(platform.nats_url, "w-slow", ["diagnostic-image"]).start()
    try:
        async with running(platform, fake, bot_config):
            job = await fake.command("imagine", {"prompt": "to be cancelled"})
            await worker.wait_for(1)
            await listed(platform, job.user_id)  # /cancel finds the job in the read model
            answers = [await fake.command(name) for name in ("me", "plans", "cancel")]
            await fake.wait_for(lambda: all(a.followups for a in answers) and done(job)(), timeout=30)
    finally:
        await worker.stop()
    me, plans, cancel = (a.followups[0] for a in answers)
    assert all(m.flags & 64 for m in (me, plans, cancel))  # ephemeral
    assert me.content.startswith("Plan: ") and "Plans:" in plans.content
    assert cancel.content.startswith("Cancelled")
    assert job.original is not None and job.original.content.startswith("Cancelled")


def bot_process(tmp_path: Path, platform: Platform, fake: FakeDiscord) -> subprocess.Popen[bytes]:
    """`tessera bots run` for dc-img-1 in a process of its own (its token and key from the environment
    the `bot_config` fixture set), talking to the fake Discord."""
    bots_file = tmp_path / "bots.toml"
    bots_file.write_text(
        f"""
[[bots]]
id = "dc-img-1"
platform = "discord"
capability = "image"
token_env = "DC_IMG_TOKEN"
frontend_key_env = "DC_IMG_KEY"
api_base_url = "{fake.rest_base}"
gateway_url = "{fake.gateway_url}"
[bots.defaults]
model = "diagnostic-image"
size = "256x256"
"""
    )
    env = {
        **os.environ,
        "TESSERA_NATS_URL": platform.nats_url,
        "TESSERA_DATABASE_URL": platform.database_url,
        "TESSERA_API_URL": platform.api_url,
        "TESSERA_DATA_DIR": str(tmp_path / "data"),
        "TESSERA_SIDE_PORT": "0",
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-m", "tessera.cli", "bots", "run", "--file", str(bots_file), "--bot", "dc-img-1"]
    return subprocess.Popen(command, env=env, cwd=REPO)


async def connected_process(tmp_path: Path, platform: Platform, fake: FakeDiscord) -> subprocess.Popen[bytes]:
    identified = fake.identified
    process = bot_process(tmp_path, platform, fake)
    await fake.wait_for(lambda: fake.identified > identified and fake.commands, timeout=60)
    await asyncio.sleep(1.0)  # READY handled, commands synced, the completion feed subscribed
    return process


def stopped(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


async def test_a_bot_process_killed_mid_job_delivers_the_result_once_after_its_restart(
    platform: Platform, fake: FakeDiscord, bot_config: BotConfig, tmp_path: Path
) -> None:
    holder = await ScriptedWorker(platform.nats_url, "w-doomed", ["diagnostic-image"]).start()
    first = await connected_process(tmp_path, platform, fake)
    try:
        interaction = await fake.command("imagine", {"prompt": "across a SIGKILL"})
        await holder.wait_for(1, timeout=30)
        await fake.wait_for(lambda: interaction.original is not None and interaction.original.buttons(), timeout=30)
    finally:
        first.send_signal(signal.SIGKILL)  # the bot process dies with the job running
        first.wait(10)
    await holder.crash()  # and so does its worker: the job is requeued to a real one, and completes
    await image_worker(platform)
    async with platform.client(await platform.frontend_key("discord", "dc-img-1")) as api:
        api.headers["Tessera-User-Ref"] = f"discord:{interaction.user_id}"
        job_id = (await api.get("/api/v1/jobs")).json()["jobs"][0]["job_id"]
        await platform.wait_status(api, job_id, {"COMPLETED"}, timeout=30)
    await asyncio.sleep(1.0)
    assert interaction.original is not None and not interaction.original.attachments  # nobody told the user yet

    second = await connected_process(tmp_path, platform, fake)
    try:
        await fake.wait_for(done(interaction), timeout=60)
        await asyncio.sleep(2.0)  # time for a second delivery, were there one
    finally:
        stopped(second)
    message = interaction.original
    assert fake.channel("700").messages == [message]  # the same message, no second one
    assert len(message.attachments) == 1 and message.attachments[0].data.startswith(PNG)
    assert sum(text.startswith("Done") for text in message.history) == 1
    assert no_repeats(message)  # a repeated delivery would upload the same result again
    assert fake.identified == 2  # two processes, each its own gateway session
