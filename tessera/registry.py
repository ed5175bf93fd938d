"""Every long-running service of Tessera, in one list that the CLI and `tessera up` both read.

Each entry says what the service is called (its `tessera` subcommand), its options, its NATS role,
how one process of it runs (under `base.lifecycle.serve`, with its side port), and how many of it
`tessera up` starts. A new service (a bot) is one more entry here.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from base.config import Settings

if TYPE_CHECKING:  # the runtime is imported when a service runs, not for every `tessera` command
    from base.lifecycle import Service


class Scale(Enum):
    """How many processes of a service `tessera up` starts."""

    ONE = "one"
    PER_WORKER = "per-worker"  # as many as `tessera up --workers` says
    IF_CONFIGURED = "if-configured"  # one when its `configured(settings)` says so (the bots: a bots file)
    NONE = "none"  # `tessera up` does not start it; an operator runs it


@dataclass(frozen=True, kw_only=True)
class Instance:
    """One process `tessera up` starts: its name in logs and the banner, its `tessera` arguments,
    and the NATS role whose user it logs in as ("" for a process whose parts log in as their own
    users, the bots: it gets the server's URL without a user)."""

    name: str
    args: tuple[str, ...]
    role: str


def _no_options(_parser: argparse.ArgumentParser) -> None:
    pass


@dataclass(frozen=True, kw_only=True)
class ServiceSpec:
    name: str
    help: str
    build: Callable[[argparse.Namespace, Settings], Service]  # the service one process runs
    options: Callable[[argparse.ArgumentParser], None] = _no_options
    scale: Scale = Scale.ONE
    grace_s: float = 30.0  # how long it may take to stop before it is aborted
    before: Callable[[Settings], Awaitable[None]] | None = None  # what its process does first
    action: str | None = None  # run as `tessera <name> <action>` (`tessera bots run`)
    configured: Callable[[Settings], bool] | None = None  # Scale.IF_CONFIGURED: whether up starts it
    nats_roles: Callable[[Settings], list[str]] | None = None  # NATS users up makes for its parts
    # What `tessera up` does (with its NATS and database URLs) once the services without one are
    # ready, before it starts this one: the bots' frontend keys are issued through the scheduler.
    prepare: Callable[[Settings, str, str], Coroutine[Any, Any, object]] | None = None

    def instances(self, *, workers: int, host: str, settings: Settings | None = None) -> list[Instance]:
        """The processes `tessera up` starts; workers are `<host>-<n>`, each with its own NATS user."""
        match self.scale:
            case Scale.ONE:
                args = (self.name, self.action) if self.action else (self.name,)
                return [Instance(name=self.name, args=args, role=self.name)]
            case Scale.IF_CONFIGURED:
                if settings is None or self.configured is None or not self.configured(settings):
                    return []
                args = (self.name, self.action) if self.action else (self.name,)
                return [Instance(name=self.name, args=args, role="")]
            case Scale.PER_WORKER:
                return [
                    Instance(
                        name=f"{self.name}-{i}",
                        args=(self.name, "--worker-id", f"{host}-{i}"),
                        role=f"worker:{host}-{i}",
                    )
                    for i in range(workers)
                ]
            case Scale.NONE:
                return []

    def main(self, args: argparse.Namespace, settings: Settings) -> None:
        """Run one process of the service until a signal stops it."""
        from base.lifecycle import run_loop, serve

        async def main() -> None:
            if self.before is not None:
                await self.before(settings)
            await serve(self.build(args, settings), name=self.name, settings=settings, grace_s=self.grace_s)

        run_loop(main())


def urls(settings: Settings) -> tuple[str, str]:
    from tessera import runtime

    return runtime.urls(settings)


# --- the services -------------------------------------------------------------------------------


async def _ensure_streams(settings: Settings) -> None:
    """The streams, made before the scheduler starts (a worker's NATS user may not make them)."""
    from streams import topology

    await topology.ensure_at(
        urls(settings)[0], artifact_ttl_s=settings.artifact_ttl_s, limits=topology.StreamLimits.of(settings)
    )


def _scheduler(_args: argparse.Namespace, settings: Settings) -> Service:
    from scheduler.service import Scheduler

    nats_url, database_url = urls(settings)
    return Scheduler(settings, nats_url=nats_url, database_url=database_url)


def _projector(_args: argparse.Namespace, settings: Settings) -> Service:
    from projector.service import Projector

    nats_url, database_url = urls(settings)
    return Projector(nats_url=nats_url, database_url=database_url)


def _webhooks(_args: argparse.Namespace, settings: Settings) -> Service:
    from webhooks.service import WebhookService

    nats_url, database_url = urls(settings)
    return WebhookService(settings, nats_url=nats_url, database_url=database_url)


def _gateway_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)


def _gateway(args: argparse.Namespace, settings: Settings) -> Service:
    from gateway.service import Gateway

    nats_url, database_url = urls(settings)
    return Gateway(settings, nats_url=nats_url, database_url=database_url, host=args.host, port=args.port)


def _worker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--worker-id", default=None, help="letters, digits, '_' and '-' (default <host>-0)")
    parser.add_argument("--gpu", type=int, default=None, help="GPU index: sets CUDA_VISIBLE_DEVICES and the id suffix")
    parser.add_argument(
        "--engines",
        default=None,
        help="comma-separated engines (default: echo, diagnostic-image, diagnostic-video, piper, espeak, "
        "pocketsphinx, and llama-cpp with the llm extra)",
    )
    parser.add_argument(
        "--slots",
        type=int,
        default=0,
        help="jobs at once across its engines, each also held to its own (default: their sum)",
    )
    parser.add_argument(
        "--max-resolution",
        type=int,
        default=None,
        help="the largest image side it takes (default: judged from its GPU's memory)",
    )


def _worker(args: argparse.Namespace, settings: Settings) -> Service:
    from worker_node.engines import build
    from worker_node.service import Worker

    nats_url = os.environ.get("TESSERA_NATS_URL") or urls(settings)[0]  # a remote worker has no database
    worker_id = args.worker_id or (
        f"{settings.worker_id.rsplit('-', 1)[0]}-gpu{args.gpu}" if args.gpu is not None else settings.worker_id
    )
    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
    engines = [build(name) for name in (args.engines.split(",") if args.engines else settings.worker_engines)]
    # The streams are the scheduler's to make: a worker's NATS user may not.
    return Worker(
        nats_url=nats_url,
        worker_id=worker_id,
        engines=engines,
        slots=args.slots or settings.worker_slots,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        artifact_ttl_s=settings.artifact_ttl_s,
        gpu_index=args.gpu,
        max_resolution=args.max_resolution,
    )


def _bots_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bot", default=None, help="run only this bot (its id in the bots file)")
    parser.add_argument(
        "--file", default=None, help="the bots file (default: TESSERA_BOTS_FILE, or bots.toml in the data directory)"
    )


def _bots(args: argparse.Namespace, settings: Settings) -> Service:
    from bots.service import BotsService
    from tessera import bots_setup

    configs = bots_setup.configs(settings, args.file, args.bot)
    nats_url = bots_setup.nats_url(settings)
    return BotsService(
        configs,
        api_url=bots_setup.api_url(settings),
        nats_url_for=lambda config: bots_setup.bot_nats_url(settings, nats_url, config),
    )


def _bots_configured(settings: Settings) -> bool:
    from tessera import bots_setup

    return bots_setup.bots_file(settings).exists()


def _bots_roles(settings: Settings) -> list[str]:
    from tessera import bots_setup

    return bots_setup.roles(settings)


async def _issue_bot_keys(settings: Settings, nats_url: str, database_url: str) -> list[str]:
    from tessera import bots_setup

    return await bots_setup.issue_keys(settings, nats_url, database_url)


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        name="scheduler", help="run the scheduler (leader or standby)", build=_scheduler, before=_ensure_streams
    ),
    ServiceSpec(name="projector", help="run the projector", build=_projector),
    ServiceSpec(name="gateway", help="run the HTTP API", build=_gateway, options=_gateway_options),
    ServiceSpec(name="webhooks", help="the webhook service (docs/webhooks.md)", build=_webhooks, action="run"),
    ServiceSpec(
        name="worker",
        help="run a worker node",
        build=_worker,
        options=_worker_options,
        scale=Scale.PER_WORKER,
        grace_s=600,
    ),
    ServiceSpec(
        name="bots",
        help="the Telegram and Discord bots of the bots file",
        build=_bots,
        options=_bots_options,
        scale=Scale.IF_CONFIGURED,
        action="run",
        configured=_bots_configured,
        nats_roles=_bots_roles,
        prepare=_issue_bot_keys,
    ),
)


def by_name(name: str) -> ServiceSpec:
    return next(spec for spec in SERVICES if spec.name == name)
