"""The bots service: every configured bot in one process, each in its own supervised task.

`tessera bots run` (and `tessera up`, when the bots file exists) runs a `BotsService` under
`base.lifecycle.serve`. Each bot reads its token and frontend key, builds its `Platform`
(`bots.platform`), opens its `BotRuntime`, and runs two things side by side: the platform serving
its users, and the completion feed handing finished jobs to `Platform.deliver`. When either fails
(a refused token, a lost connection, a crash) the bot is logged, closed and started again after a
backoff (1 s, doubling to 60 s, back to 1 s once it has run a minute); the other bots never notice.
`/readyz` says which bots are running and why the others are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from base.health import Readiness
from bots.config import BotConfig, ConfigError
from bots.platform import Platform, PlatformUnavailable, create_platform
from bots.runtime import BotRuntime

log = logging.getLogger(__name__)

PlatformFactory = Callable[[BotConfig, str], Platform]


class BotState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    BACKING_OFF = "backing off"  # failed; starts again after its backoff
    STOPPED = "stopped"


@dataclass
class BotStatus:
    state: BotState = BotState.STARTING
    error: str | None = None
    restarts: int = 0


class BotSupervisor:
    """One bot, started again with backoff whenever it fails, until `stop()`."""

    def __init__(
        self,
        config: BotConfig,
        *,
        api_url: str,
        nats_url: str,
        factory: PlatformFactory,
        min_backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        healthy_after_s: float = 60.0,
    ) -> None:
        self.config = config
        self.api_url = api_url
        self.nats_url = nats_url
        self.factory = factory
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.healthy_after_s = healthy_after_s
        self.status = BotStatus()
        self.runtime: BotRuntime | None = None
        self._platform: Platform | None = None
        self._stopping = asyncio.Event()

    @property
    def ready(self) -> bool:
        runtime = self.runtime
        return self.status.state is BotState.RUNNING and runtime is not None and runtime.connected and runtime.following

    async def run(self) -> None:
        backoff = self.min_backoff_s
        while not self._stopping.is_set():
            started = time.monotonic()
            self.status.state = BotState.STARTING
            try:
                await self._run_once()
            except Exception as exc:
                self.status.error = f"{type(exc).__name__}: {exc}"
                log.error("bot %s failed: %s", self.config.id, self.status.error, exc_info=not _expected(exc))
            else:
                if self._stopping.is_set():
                    break
                self.status.error = "its platform stopped on its own"
                log.warning("bot %s: its platform stopped on its own; starting it again", self.config.id)
            if time.monotonic() - started >= self.healthy_after_s:
                backoff = self.min_backoff_s
            self.status.state = BotState.BACKING_OFF
            self.status.restarts += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            backoff = min(backoff * 2, self.max_backoff_s)
        self.status.state = BotState.STOPPED

    async def _run_once(self) -> None:
        token, key = self.config.token(), self.config.frontend_key()  # a missing secret fails before anything starts
        platform = self.factory(self.config, token)
        async with BotRuntime(self.config, api_url=self.api_url, nats_url=self.nats_url, frontend_key=key) as runtime:
            self.runtime, self._platform = runtime, platform
            try:
                if self._stopping.is_set():
                    return
                self.status.state = BotState.RUNNING
                await _first_to_end(
                    asyncio.create_task(platform.run(runtime), name=f"bot-{self.config.id}"),
                    asyncio.create_task(runtime.completions(platform.deliver), name=f"bot-{self.config.id}-results"),
                    stop=(platform.stop, runtime.stop),
                )
            finally:
                self._platform = None

    async def stop(self) -> None:
        self._stopping.set()
        for stop in (
            self._platform.stop if self._platform else None,
            self.runtime.stop if self.runtime else None,
        ):
            if stop is not None:
                with contextlib.suppress(Exception):
                    await stop()


async def _first_to_end(*tasks: asyncio.Task[None], stop: Sequence[Callable[[], object]]) -> None:
    """Wait until one task ends, ask all to stop, wait for the others; raise the first error."""
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for ask in stop:
            with contextlib.suppress(Exception):
                result = ask()
                if asyncio.iscoroutine(result):
                    await result
        _, pending = await asyncio.wait(tasks, timeout=10)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]  # checked not None on the line above


def _expected(exc: Exception) -> bool:
    """A failure an operator fixes from the message alone (a bad file, token or module): no traceback."""
    return isinstance(exc, ConfigError | PlatformUnavailable)


class BotsService:
    """Every bot of `configs`, each under its own `BotSupervisor` (`base.lifecycle.Service`).

    `nats_url_for(config)` is the NATS URL a bot logs in with (its own user under `tessera up`);
    `api_url_for(config)` its Tessera API (the bot's `tessera_url`, else the platform's).
    `factory` builds a bot's Platform (default: the platform's module, `bots.platform.create_platform`).
    """

    def __init__(
        self,
        configs: Sequence[BotConfig],
        *,
        api_url: str,
        nats_url_for: Callable[[BotConfig], str],
        factory: PlatformFactory = create_platform,
        min_backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
    ) -> None:
        self.supervisors = [
            BotSupervisor(
                config,
                api_url=config.tessera_url or api_url,
                nats_url=nats_url_for(config),
                factory=factory,
                min_backoff_s=min_backoff_s,
                max_backoff_s=max_backoff_s,
            )
            for config in configs
        ]

    def bot(self, bot_id: str) -> BotSupervisor:
        return next(s for s in self.supervisors if s.config.id == bot_id)

    async def run(self) -> None:
        tasks = [asyncio.create_task(s.run(), name=f"supervise-{s.config.id}") for s in self.supervisors]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.supervisors), return_exceptions=True)

    async def readiness(self) -> Readiness:
        """Ready when every bot runs (connected to NATS, following its results, its platform serving)."""
        return Readiness(
            checks={f"bot:{s.config.id}": s.ready for s in self.supervisors},
            details={
                "bots": {
                    s.config.id: {"state": s.status.state.value, "error": s.status.error, "restarts": s.status.restarts}
                    for s in self.supervisors
                }
            },
        )
