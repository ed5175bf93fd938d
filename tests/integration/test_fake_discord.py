"""The fake Discord against the real discord.py client: the library connects, syncs and answers as it
would against discord.com, with only its two base addresses changed."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator

import discord
import pytest
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket

from tests.fake_discord import FakeDiscord


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    fake = await FakeDiscord().start()
    old = discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = fake.rest_base
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    try:
        yield fake
    finally:
        discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = old
        await fake.close()


@contextlib.asynccontextmanager
async def connected(fake: FakeDiscord, client: discord.Client) -> AsyncIterator[None]:
    task = asyncio.create_task(client.start(fake.token))
    try:
        await fake.wait_for(lambda: fake.identified and fake.connected(), timeout=20)
        yield
    finally:
        await client.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


async def test_the_real_client_connects_syncs_and_defers_a_slash_command(fake: FakeDiscord) -> None:
    client = discord.Client(intents=discord.Intents.none())
    tree = app_commands.CommandTree(client)
    seen: list[tuple[str, int | None]] = []

    @tree.command(name="imagine", description="Draw a picture")
    @app_commands.describe(prompt="What to draw")
    async def imagine(interaction: discord.Interaction, prompt: str, steps: int | None = None) -> None:
        await interaction.response.defer(thinking=True)
        seen.append((prompt, steps))
        await interaction.followup.send(f"queued: {prompt}", file=discord.File(io.BytesIO(b"\x89PNG fake"), "a.png"))

    async with connected(fake, client):
        synced = await tree.sync()
        assert [c.name for c in synced] == ["imagine"] and fake.commands[0]["options"][0]["name"] == "prompt"
        interaction = await fake.command("imagine", {"prompt": "a cat", "steps": 12})
        await fake.wait_for(lambda: interaction.followups, timeout=10)

    assert seen == [("a cat", 12)]
    assert fake.compressions[0] in ("zlib-stream", "zstd-stream")
    assert interaction.response_type == 5
    assert ("POST", f"/api/v10/interactions/{interaction.id}/{interaction.token}/callback") in fake.requests
    message = interaction.original
    assert message is not None and not message.loading and message.content == "queued: a cat"
    assert message.history == ["", "queued: a cat"]  # "thinking...", then the follow-up in its place
    assert [(a.filename, a.data) for a in message.attachments] == [("a.png", b"\x89PNG fake")]
    assert fake.channel("700").messages == [message]


async def test_after_a_dropped_socket_the_client_resumes_and_gets_what_it_missed(fake: FakeDiscord) -> None:
    client = discord.Client(intents=discord.Intents.none())
    tree = app_commands.CommandTree(client)
    prompts: list[str] = []

    @tree.command(name="imagine", description="Draw a picture")
    async def imagine(interaction: discord.Interaction, prompt: str) -> None:
        await interaction.response.send_message(f"got {prompt}")
        prompts.append(prompt)

    async with connected(fake, client):
        await tree.sync()
        await fake.drop()  # no close frame: the client finds out by itself
        missed = await fake.command("imagine", {"prompt": "while away"})
        await fake.wait_for(lambda: fake.resumed == 1 and missed.original is not None, timeout=20)

    assert fake.identified == 1 and prompts == ["while away"]
    assert fake.compressions[-1] == fake.compressions[0]  # the resumed socket is compressed the same way


async def test_a_429_with_via_is_waited_out_and_retried(fake: FakeDiscord) -> None:
    client = discord.Client(intents=discord.Intents.none())
    async with connected(fake, client):
        fake.rate_limit("POST", "/api/v10/channels/", retry_after=0.3)
        channel = client.get_partial_messageable(701)
        sent = await channel.send("after the wait")
    assert sent.content == "after the wait"
    assert fake.requests.count(("POST", "/api/v10/channels/701/messages")) == 2
    assert [m.content for m in fake.channel("701").messages] == ["after the wait"]
