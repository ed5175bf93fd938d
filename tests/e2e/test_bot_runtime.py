"""A bot's runtime against the real platform: it submits for its users with its frontend key, hears
progress on its own NATS subject, gets each result through its durable feed (again when its
handler failed, once when the user can never be reached), and a bot that keeps failing never
takes the others down."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from bots import config as bots_config
from bots.completions import Undeliverable
from bots.config import BotConfig
from bots.options import OptionError
from bots.reply import ReplyContext
from bots.runtime import BotRuntime
from bots.service import BotsService, BotState
from gateway.client import ApiError
from gateway.schemas import JobView
from streams.messages import Notification, Progress
from tests.conftest import Platform


def bot_config(tmp_path: Path, bot_id: str, capability: str = "image", platform: str = "telegram") -> BotConfig:
    key_file = tmp_path / f"{bot_id}.key"
    token_file = tmp_path / f"{bot_id}.token"
    token_file.write_text("123:fake-token\n")
    [config] = bots_config.parse(
        {
            "bots": [
                {
                    "id": bot_id,
                    "platform": platform,
                    "capability": capability,
                    "token_file": str(token_file),
                    "frontend_key_file": str(key_file),
                    "defaults": {"size": "512x512"},
                    "flood_burst": 10,
                    "flood_per_minute": 60,
                }
            ]
        },
        environ={},
    )
    return config


async def until(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the condition did not hold in time")
        await asyncio.sleep(0.05)


async def runtime_for(platform: Platform, config: BotConfig) -> BotRuntime:
    key = await platform.frontend_key(config.frontend, config.id)
    config.frontend_key_source.file.write_text(key)  # type: ignore[union-attr]  # made with a file above
    return BotRuntime(config, api_url=platform.api_url, nats_url=platform.nats_url, frontend_key=key)


async def test_a_bot_submits_for_its_user_follows_progress_and_hands_over_results(
    platform: Platform, tmp_path: Path
) -> None:
    config = bot_config(tmp_path, "tg-img-1")
    async with await runtime_for(platform, config) as runtime:
        user = runtime.user_ref(4242)
        context = ReplyContext(chat_id=4242, message_id=10, user_message_id=9)
        job = await runtime.submit(
            user, "echo", "hello there", context, extra_params={"delay_seconds": 1.5}, idempotency_key="update-1"
        )
        assert job.status in ("QUEUED", "RUNNING")
        again = await runtime.submit(
            user, "echo", "hello there", context, extra_params={"delay_seconds": 1.5}, idempotency_key="update-1"
        )
        assert again.job_id == job.job_id  # a redelivered update makes no second job

        reports: list[Progress] = []

        async def listen() -> None:
            async for report in runtime.progress(job.job_id):
                reports.append(report)

        listener = asyncio.create_task(listen())
        updates = [update async for update in runtime.follow(user, job.job_id)]
        listener.cancel()
        assert reports and all(r.job_id == job.job_id for r in reports)  # on tessera.progress.telegram.tg-img-1.<job>
        assert updates[-1].status == "COMPLETED" and updates[-1].terminal
        assert any(u.status == "RUNNING" and u.fraction is not None for u in updates)

        me = await runtime.me(user)  # registered on first sight, on the free plan
        assert me.registered and me.platform == "telegram" and me.platform_user_id == "4242"

        speech = await runtime.submit(user, "tts", "A short sentence to speak.", context)
        view = await platform_job(runtime, user, speech.job_id)
        [artifact] = view.artifacts
        small = await runtime.artifact(user, speech.job_id, artifact, max_bytes=10_000_000)
        assert small.data is not None and small.data[:4] == b"RIFF" and small.url is None
        large = await runtime.artifact(user, speech.job_id, artifact, max_bytes=10)
        assert large.data is None and large.url and str(artifact.id) in large.url
        assert "signature=" in large.url and large.url_expires_at is not None  # a link that needs no key

        slow = await runtime.submit(user, "echo", "slow", context, extra_params={"delay_seconds": 30})
        await runtime.job(user, slow.job_id)
        for _ in range(100):  # /cancel finds the job in the read model
            if (await runtime.api(user).jobs(status=(await runtime.job(user, slow.job_id)).status)).jobs:
                break
            await asyncio.sleep(0.05)
        cancelled = await runtime.cancel_latest(user)
        assert cancelled is not None and cancelled.job_id == slow.job_id
        assert (await runtime.job(user, slow.job_id)).status == "CANCELLED"

        with pytest.raises(OptionError):
            await runtime.submit(user, None, "a fox --ar banana", context)
        with pytest.raises(ApiError) as refused:
            await runtime.submit(user, None, "a fox --model flux-dev", context)
        assert refused.value.code == "MODEL_NOT_ALLOWED" and refused.value.extra["model"] == "flux-dev"
        sentence = await runtime.explain(user, refused.value)
        assert "flux-dev" in sentence and "pro" in sentence


async def platform_job(runtime: BotRuntime, user: str, job_id: uuid.UUID) -> JobView:
    async for update in runtime.follow(user, job_id):
        if update.terminal:
            break
    return await runtime.job(user, job_id)


async def test_a_result_comes_again_after_a_failed_handler_and_once_when_undeliverable(
    platform: Platform, tmp_path: Path
) -> None:
    config = bot_config(tmp_path, "tg-img-2")
    async with await runtime_for(platform, config) as runtime:
        runtime.ack_wait_s = 3
        retried = await runtime.submit(runtime.user_ref(1), "echo", "retry me", ReplyContext(chat_id=1))
        blocked = await runtime.submit(runtime.user_ref(2), "echo", "blocked me", ReplyContext(chat_id=2))
        calls: Counter[uuid.UUID] = Counter()
        delivered: list[Notification] = []

        async def deliver(notification: Notification) -> None:
            calls[notification.job_id] += 1
            if notification.job_id == blocked.job_id:
                raise Undeliverable("Forbidden: bot was blocked by the user")
            if calls[notification.job_id] == 1:
                raise RuntimeError("the platform is down")
            delivered.append(notification)

        feed = asyncio.create_task(runtime.completions(deliver))
        await until(lambda: len(delivered) == 1)
        await asyncio.sleep(4)  # past ack_wait: an unacknowledged notification would be back by now
        await runtime.stop()
        await asyncio.wait_for(feed, 10)
    assert calls[retried.job_id] == 2 and calls[blocked.job_id] == 1
    assert ReplyContext.from_dict(delivered[0].reply_context) == ReplyContext(chat_id=1)


class FakePlatform:
    """A platform that serves nobody: it records the results it is handed."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.stopped = asyncio.Event()
        self.delivered: list[Notification] = []

    async def run(self, runtime: BotRuntime) -> None:
        if self.fail:
            raise RuntimeError("Unauthorized: the token was refused")
        await self.stopped.wait()

    async def deliver(self, notification: Notification) -> None:
        self.delivered.append(notification)

    async def stop(self) -> None:
        self.stopped.set()


async def test_a_failing_bot_is_restarted_and_never_takes_the_others_down(platform: Platform, tmp_path: Path) -> None:
    good, bad, absent = (bot_config(tmp_path, name) for name in ("tg-vid-1", "tg-vid-2", "tg-vid-3"))
    for config in (good, bad, absent):
        key = await platform.frontend_key(config.frontend, config.id)
        config.frontend_key_source.file.write_text(key)  # type: ignore[union-attr]  # made with a file
    absent.frontend_key_source.file.unlink()  # type: ignore[union-attr]  # a key file gone: that bot alone fails
    platforms = {good.id: FakePlatform(), bad.id: FakePlatform(fail=True)}

    def factory(config: BotConfig, token: str) -> FakePlatform:
        assert token == "123:fake-token"
        return platforms[config.id]

    service = BotsService(
        [good, bad, absent],
        api_url=platform.api_url,
        nats_url_for=lambda _config: platform.nats_url,
        factory=factory,
        min_backoff_s=0.1,
        max_backoff_s=0.2,
    )
    task = asyncio.create_task(service.run())
    try:
        await until(lambda: service.bot(good.id).ready)
        await until(lambda: service.bot(bad.id).status.restarts >= 2 and service.bot(absent.id).status.restarts >= 2)
        assert service.bot(good.id).status.state is BotState.RUNNING and service.bot(good.id).status.restarts == 0
        assert "token was refused" in (service.bot(bad.id).status.error or "")
        assert "frontend_key_file" in (service.bot(absent.id).status.error or "")
        readiness = await service.readiness()
        assert readiness.checks == {"bot:tg-vid-1": True, "bot:tg-vid-2": False, "bot:tg-vid-3": False}

        runtime = service.bot(good.id).runtime
        assert runtime is not None
        job = await runtime.submit(runtime.user_ref(7), "echo", "for the good bot", ReplyContext(chat_id=7))
        await until(lambda: bool(platforms[good.id].delivered))
        assert platforms[good.id].delivered[0].job_id == job.job_id
    finally:
        await service.stop()
        await asyncio.wait_for(task, 15)
    assert all(s.status.state is BotState.STOPPED for s in service.supervisors)


async def test_bots_check_names_each_bots_missing_secret_and_refused_key(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from base.config import Settings
    from tessera import bots_setup

    key = await platform.frontend_key("telegram", "tg-img-1")
    monkeypatch.setenv("GOOD_TOKEN", "123:abc")
    monkeypatch.setenv("GOOD_KEY", key)
    monkeypatch.setenv("BAD_KEY", "tsk_not_a_key")
    monkeypatch.setenv("TESSERA_API_URL", platform.api_url)
    file = tmp_path / "bots.toml"
    file.write_text(
        "\n".join(
            f'[[bots]]\nid = "{bot}"\nplatform = "telegram"\ncapability = "image"\n'
            f'token_env = "{token}"\nfrontend_key_env = "{key_env}"\n'
            for bot, token, key_env in (
                ("tg-img-1", "GOOD_TOKEN", "GOOD_KEY"),
                ("tg-img-2", "NO_TOKEN", "GOOD_KEY"),
                ("tg-img-3", "GOOD_TOKEN", "BAD_KEY"),
            )
        )
    )
    findings = await bots_setup.check(Settings(data_dir=tmp_path), str(file))
    lines = [f.line() for f in findings]
    assert lines[0] == f"ok   file: {file}: 3 bots"
    assert "ok   tg-img-1: frontend key accepted" in lines[2]
    failed = [line for line in lines if line.startswith("FAIL")]
    assert failed[0] == "FAIL tg-img-2: bot 'tg-img-2', field 'token_env': no token in environment variable NO_TOKEN"
    assert failed[1].startswith(f"FAIL tg-img-3: frontend key refused by {platform.api_url}: INVALID_API_KEY")
    assert len(failed) == 2
