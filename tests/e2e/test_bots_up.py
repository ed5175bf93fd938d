"""The twelve bots of the product documents end to end through `tessera up`.

The fake Telegram Bot API (six bots) and the fake Discord (six applications on one port, as
discord.py's addresses are process-wide) run in this process; `tessera up` runs the whole platform
and, because the bots file exists, the bots process with all twelve. The bots file names no
frontend keys: `tessera up` issues each bot its key once and keeps it in its data directory.
Users then ask for an image on Telegram and on Discord and for a video on Telegram, and the bots
process is killed with SIGKILL while a job is under way: `tessera up` starts it again and the photo
arrives once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tessera.embedded import free_port
from tests.e2e.test_tessera_up import HEALTH_LINE
from tests.fake_discord import FakeDiscord
from tests.fake_telegram import FakeTelegram, Sent, serve

REPO = Path(__file__).resolve().parents[2]
BOTS = [
    (f"{short}-{kind}-{n}", platform, capability)
    for short, platform in (("tg", "telegram"), ("dc", "discord"))
    for kind, capability in (("img", "image"), ("vid", "video"))
    for n in (1, 2, 3)
]


def bots_file(path: Path) -> Path:
    """The twelve bots: tokens from environment variables, no frontend keys (`tessera up` issues
    them), the diagnostic engines as their models; the platforms' addresses come from the
    environment (TESSERA_TELEGRAM_API_URL, ..., all bots of a platform alike)."""
    entries = []
    for bot_id, platform, capability in BOTS:
        defaults = (
            'model = "diagnostic-image"\nsize = "512x512"'
            if capability == "image"
            else 'model = "diagnostic-video"\nsize = "256x256"\nseconds = 1'
        )
        entries.append(
            f'[[bots]]\nid = "{bot_id}"\nplatform = "{platform}"\ncapability = "{capability}"\n'
            f'token_env = "{token_env(bot_id)}"\n[bots.defaults]\n{defaults}\n'
        )
    path.write_text("\n".join(entries))
    return path


def token_env(bot_id: str) -> str:
    return bot_id.upper().replace("-", "_") + "_TOKEN"


def child_pid(parent: int, service: str) -> int:
    """The pid of `tessera up`'s child running `tessera <service> ...`, from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and argv[3:4] == [service]:  # python -m tessera.cli <service> ...
            return int(entry.name)
    raise AssertionError(f"tessera up ({parent}) has no {service} process")


async def ready_bots(readyz: str, timeout: float = 90) -> dict[str, dict[str, object]]:
    """The bots service's /readyz once it is ready: each bot's state."""
    said = "no answer"
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(int(timeout * 5)):
            try:
                answer = await client.get(readyz)
                said = answer.text
                if answer.status_code == 200:
                    bots: dict[str, dict[str, object]] = answer.json()["bots"]
                    return bots
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"the bots did not become ready: {said}")


def from_bot(telegram: FakeTelegram, chat_id: int, *kinds: str) -> list[Sent]:
    return [m for m in telegram.messages(chat_id, from_bot=True) if m.kind in kinds]


def progress_of(telegram: FakeTelegram, chat_id: int) -> Callable[[], Sent | None]:
    """The bot's progress message in the chat, once it shows the Cancel button."""
    return lambda: next((m for m in from_bot(telegram, chat_id, "text") if m.buttons), None)


@pytest.mark.timeout(240)
async def test_twelve_bots_run_under_tessera_up_and_a_killed_bots_process_delivers_once(tmp_path: Path) -> None:
    telegram = FakeTelegram()
    discord = await FakeDiscord(token="dc-img-1-token").start()
    async with serve(telegram) as telegram_url:
        tokens: dict[str, str] = {}
        apps: dict[str, FakeDiscord] = {"dc-img-1": discord}
        for bot_id, platform, _ in BOTS:
            if platform == "telegram":
                tokens[bot_id] = telegram.add_bot(bot_id.replace("-", "_") + "_bot")
            else:
                if bot_id not in apps:
                    apps[bot_id] = discord.add_application(f"{bot_id}-token")
                tokens[bot_id] = apps[bot_id].token
        port = free_port(None)
        data = tmp_path / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        env.update(
            {token_env(bot_id): token for bot_id, token in tokens.items()},
            TESSERA_DATA_DIR=str(data),
            TESSERA_BOTS_FILE=str(bots_file(tmp_path / "bots.toml")),
            TESSERA_TELEGRAM_API_URL=f"{telegram_url}/bot",
            TESSERA_TELEGRAM_FILE_URL=f"{telegram_url}/file/bot",
            TESSERA_DISCORD_API_URL=discord.rest_base,
            TESSERA_DISCORD_GATEWAY_URL=discord.gateway_url,
            PYTHONUNBUFFERED="1",
        )
        log_path = tmp_path / "up.log"
        log = log_path.open("w")
        up = subprocess.Popen(
            [sys.executable, "-m", "tessera.cli", "up", "--port", str(port)],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            for _ in range(1500):
                if "Tessera is up." in log_path.read_text():
                    break
                assert up.poll() is None, log_path.read_text()
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"no banner: {log_path.read_text()[-5000:]}")
            banner = log_path.read_text().split("Tessera is up.", 1)[1]
            services = {name: readyz for name, _, readyz in HEALTH_LINE.findall(banner)}
            assert "bots" in services, banner
            bots = await ready_bots(services["bots"])
            assert {bot_id: state["state"] for bot_id, state in bots.items()} == {b: "running" for b, _, _ in BOTS}
            keys = sorted((data / "bot-keys").iterdir())
            assert len(keys) == 12 and all(k.stat().st_mode & 0o077 == 0 for k in keys)
            await asyncio.gather(*(app.wait_for(lambda a=app: a.commands, 30) for app in apps.values()))

            # Telegram: /image on tg-img-1 becomes a photo, its progress message edited meanwhile.
            telegram.user(601, "Ada")
            telegram.user_says(tokens["tg-img-1"], 601, "/image a lighthouse at dusk --seed 7")
            (photo,) = await telegram.wait_for(lambda: from_bot(telegram, 601, "photo") or None, 60)
            (progress,) = from_bot(telegram, 601, "text")
            await telegram.wait_for(lambda: (progress.text or "").startswith("Done"), 20)
            history = [*progress.edits, progress.text or ""]
            assert history[0] == "Sending your request..." and history[1].startswith("Queued."), history
            assert photo.file is not None and photo.file.data.startswith(b"\x89PNG")

            # Discord: /imagine on dc-img-2 becomes an attachment.
            dc2 = apps["dc-img-2"]
            imagine = await dc2.command("imagine", {"prompt": "a kite over the sea", "seed": 3})
            await dc2.wait_for(lambda: imagine.original is not None and imagine.original.content.startswith("Done"), 60)
            assert imagine.original is not None and len(imagine.original.attachments) == 1
            assert imagine.original.attachments[0].data.startswith(b"\x89PNG")
            assert not any(app.interactions for bot_id, app in apps.items() if bot_id != "dc-img-2")

            # Telegram: /video on tg-vid-3 becomes a video, an animation or a document (an animated WebP).
            telegram.user(603, "Grace")
            telegram.user_says(tokens["tg-vid-3"], 603, "/video waves on a beach")
            (video,) = await telegram.wait_for(
                lambda: from_bot(telegram, 603, "video", "animation", "document") or None, 60
            )
            assert video.file is not None and video.file.data[:4] == b"RIFF"
            dc_video = await apps["dc-vid-1"].command("video", {"prompt": "a paper boat", "seconds": 1.0})
            await apps["dc-vid-1"].wait_for(lambda: dc_video.original and dc_video.original.attachments, 60)
            assert dc_video.original is not None and dc_video.original.attachments[0].data[:4] == b"RIFF"

            # SIGKILL the bots process while a job is under way (its worker held still meanwhile):
            # `tessera up` starts it again and the photo arrives once, the same message edited.
            worker = child_pid(up.pid, "worker")
            telegram.user(604, "Linus")
            os.kill(worker, signal.SIGSTOP)
            try:
                telegram.user_says(tokens["tg-img-2"], 604, "/image a phoenix")
                killed_progress = await telegram.wait_for(progress_of(telegram, 604), 30)
                killed = child_pid(up.pid, "bots")
                os.kill(killed, signal.SIGKILL)
            finally:
                os.kill(worker, signal.SIGCONT)
            assert not from_bot(telegram, 604, "photo")
            (late,) = await telegram.wait_for(lambda: from_bot(telegram, 604, "photo") or None, 90)
            await telegram.wait_for(lambda: (killed_progress.text or "").startswith("Done"), 20)
            shown = killed_progress.edits  # the message the killed process posted, edited by the new one
            assert shown[0] == "Sending your request..." and shown[1].startswith("Queued."), shown
            assert child_pid(up.pid, "bots") != killed
            assert "bots exited with -9; restarting" in log_path.read_text()
            bots = await ready_bots(services["bots"])
            assert all(state["state"] == "running" for state in bots.values()), bots
            await asyncio.sleep(3.0)  # a second delivery would come within the consumer's redelivery
            assert from_bot(telegram, 604, "photo") == [late] and late.file is not None
            assert [m.kind for m in telegram.messages(604, from_bot=True)] == ["text", "photo"]
        finally:
            up.send_signal(signal.SIGINT)
            try:
                await asyncio.to_thread(up.wait, 60)  # the fakes, in this loop, answer the bots as they stop
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()
            log.close()
            await discord.close()
    output = log_path.read_text()
    assert up.returncode == 0, output[-5000:]
