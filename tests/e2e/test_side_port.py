"""Every service's side port: /readyz says 503 and what is missing while NATS is down, 200 again
once the service has reconnected; a second scheduler is ready as a standby and says so."""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path
from typing import Any

import httpx
import pytest

from base.lifecycle import Service
from base.sideport import SidePort
from gateway.service import Gateway
from projector.service import Projector
from scheduler.service import Scheduler
from tessera.embedded import free_port
from tests import conftest
from tests.e2e.test_reliability import own_nats
from worker_node.engines import build
from worker_node.service import Worker


async def statuses(client: httpx.AsyncClient, ports: dict[str, SidePort]) -> dict[str, tuple[int, dict[str, Any]]]:
    answers = {}
    for name, side in ports.items():
        response = await client.get(f"{side.url}/readyz")
        answers[name] = (response.status_code, response.json())
    return answers


async def until(
    client: httpx.AsyncClient, ports: dict[str, SidePort], status: int, timeout: float = 30
) -> dict[str, tuple[int, dict[str, Any]]]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        answers = await statuses(client, ports)
        if all(code == status for code, _ in answers.values()):
            return answers
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not every /readyz answered {status}: {answers}")
        await asyncio.sleep(0.1)


async def stopped_within(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    """Wait for stopped services' tasks to end; name the ones that did not, with where they hang."""
    _done, pending = await asyncio.wait(tasks, timeout=timeout)
    if pending:
        stacks = {}
        for task in pending:
            out = io.StringIO()
            task.print_stack(file=out)
            stacks[task.get_name()] = out.getvalue()
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        raise AssertionError(f"still running {timeout} s after stop(): {stacks}")


@pytest.mark.timeout(120)
async def test_readyz_turns_503_while_nats_is_down_and_200_once_it_is_back(tmp_path: Path, database_url: str) -> None:
    async with own_nats(tmp_path) as server:
        settings = conftest.test_settings()
        services: dict[str, Service] = {
            "scheduler": Scheduler(settings, nats_url=server.url, database_url=database_url, name="scheduler-a"),
            "projector": Projector(nats_url=server.url, database_url=database_url),
            "worker": Worker(
                nats_url=server.url,
                worker_id="side",
                engines=[build("echo")],
                heartbeat_interval_s=settings.heartbeat_interval_s,
            ),
            "gateway": Gateway(settings, nats_url=server.url, database_url=database_url, port=free_port(None)),
        }
        async with contextlib.AsyncExitStack() as stack, httpx.AsyncClient(timeout=10) as client:
            ports = {
                name: await stack.enter_async_context(SidePort(name, service.readiness))
                for name, service in services.items()
            }
            # Bound before the services start: alive, not ready.
            for name, (code, body) in (await statuses(client, ports)).items():
                assert code == 503 and body["service"] == name and body["missing"], body
                assert (await client.get(f"{ports[name].url}/healthz")).status_code == 200
            tasks = [asyncio.create_task(service.run(), name=name) for name, service in services.items()]

            async def stop_all() -> None:
                for service in services.values():
                    await service.stop()
                await stopped_within(tasks, 30)

            stack.push_async_callback(stop_all)
            ready = await until(client, ports, 200)
            assert ready["scheduler"][1]["role"] == "leader"
            assert ready["worker"][1]["checks"] == {"nats": True, "registered": True, "accepting": True}
            metrics = (await client.get(f"{ports['worker'].url}/metrics")).text
            assert any(
                line.startswith("tessera_build_info{") and 'service="worker"' in line for line in metrics.splitlines()
            ), metrics

            standby = Scheduler(settings, nats_url=server.url, database_url=database_url, name="scheduler-b")
            standby_port = await stack.enter_async_context(SidePort("standby", standby.readiness))
            standby_task = asyncio.create_task(standby.run(), name="standby")

            async def stop_standby() -> None:
                await standby.stop()
                await stopped_within([standby_task], 30)

            stack.push_async_callback(stop_standby)
            code, body = (await until(client, {"standby": standby_port}, 200))["standby"]
            assert body["role"] == "standby"

            assert server.process is not None
            server.process.kill()  # SIGKILL: no goodbye to anyone
            server.process.wait()
            down = await until(client, ports, 503)
            for _code, body in down.values():
                assert "nats" in body["missing"], body

            server.start(preferred_port=server.port)
            back = await until(client, ports, 200)
            assert back["scheduler"][1]["role"] == "leader"
