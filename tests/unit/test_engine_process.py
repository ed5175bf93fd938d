"""An engine's child process: answers, partial results, and a real stop when a call is abandoned."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from worker_node.engines.base import EngineError
from worker_node.engines.process import Emit, EngineProcess


class Target:
    """Built in the child (this module is imported there by name, as pickle refers to it)."""

    def __init__(self) -> None:
        self.calls = 0

    def count(self, n: int, emit: Emit) -> tuple[int, int]:
        self.calls += 1
        for i in range(n):
            emit(i)
        return os.getpid(), self.calls

    def spin(self, seconds: float, emit: Emit) -> None:
        """Busy in pure Python, the GIL held throughout, as a C decoder would hold it."""
        emit("started")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pass

    def spin_deaf(self, seconds: float, emit: Emit) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.spin(seconds, emit)

    def noisy(self, emit: Emit) -> str:
        print("a library that prints")
        os.write(1, b"and one that writes to fd 1 from C\n")
        return "intact"

    def crash(self, emit: Emit) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def refuse(self, emit: Emit) -> None:
        raise EngineError("INVALID_PARAMS", "no such voice")

    def break_down(self, emit: Emit) -> None:
        raise ValueError("bad tensor")


class Unloadable:
    def __init__(self) -> None:
        raise RuntimeError("model file missing")


def alive(pid: int) -> bool:
    """Running (a zombie that no one has reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
async def engine() -> Any:
    process = EngineProcess("test-engine", Target, stop_grace_s=0.5)
    yield process
    await process.close()


async def started(process: EngineProcess, method: str, seconds: float) -> tuple[asyncio.Task[Any], int]:
    """A call under way in the child (it has said so), and the child's pid."""
    begun = asyncio.Event()

    async def on_partial(_value: Any) -> None:
        begun.set()

    task = asyncio.create_task(process.call(method, seconds, partial=on_partial))
    await asyncio.wait_for(begun.wait(), 20)
    assert process.pid is not None
    return task, process.pid


async def test_partials_arrive_in_order_and_the_process_is_kept_between_calls(engine: EngineProcess) -> None:
    seen: list[int] = []

    async def on_partial(value: Any) -> None:
        seen.append(value)

    pid, calls = await engine.call("count", 5, partial=on_partial)
    assert seen == [0, 1, 2, 3, 4] and pid != os.getpid() and calls == 1
    assert await engine.call("count", 0) == (pid, 2)  # the same target, built once


async def test_a_cancelled_call_kills_the_process_and_the_next_call_starts_a_fresh_one(engine: EngineProcess) -> None:
    task, pid = await started(engine, "spin", 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert not alive(pid) and engine.pid is None
    fresh, calls = await engine.call("count", 1)
    assert fresh != pid and calls == 1


async def test_a_timed_out_call_kills_the_process(engine: EngineProcess) -> None:
    await engine.call("count", 0)  # started and warm
    pid = engine.pid
    assert pid is not None
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await engine.call("spin", 60)
    assert not alive(pid)
    assert (await engine.call("count", 0))[0] != pid


async def test_a_process_that_ignores_sigterm_is_killed_after_the_grace(engine: EngineProcess) -> None:
    task, pid = await started(engine, "spin_deaf", 60)
    began = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not alive(pid) and time.monotonic() - began < 5


async def test_a_crashed_process_is_engine_disconnected_and_the_next_call_works(engine: EngineProcess) -> None:
    with pytest.raises(EngineError) as failure:
        await engine.call("crash")
    assert failure.value.code == "ENGINE_DISCONNECTED"
    assert f"exit status {-signal.SIGKILL}" in failure.value.message
    assert (await engine.call("count", 0))[1] == 1


async def test_errors_in_the_child_keep_their_code_or_become_engine_error(engine: EngineProcess) -> None:
    with pytest.raises(EngineError) as refused:
        await engine.call("refuse")
    assert (refused.value.code, refused.value.message) == ("INVALID_PARAMS", "no such voice")
    with pytest.raises(EngineError) as broken:
        await engine.call("break_down")
    assert broken.value.code == "ENGINE_ERROR" and broken.value.message == "test-engine: ValueError: bad tensor"
    assert (await engine.call("count", 0))[1] == 1  # the process survived both


async def test_a_target_that_cannot_be_built_is_engine_unavailable() -> None:
    process = EngineProcess("test-engine", Unloadable)
    try:
        with pytest.raises(EngineError) as failure:
            await process.call("anything")
        assert failure.value.code == "ENGINE_UNAVAILABLE" and "model file missing" in failure.value.message
    finally:
        await process.close()


async def test_what_the_child_prints_does_not_corrupt_its_answers(engine: EngineProcess) -> None:
    assert await engine.call("noisy") == "intact"


async def test_the_event_loop_stays_responsive_while_the_child_holds_its_gil(engine: EngineProcess) -> None:
    await engine.call("count", 0)
    lag = 0.0
    work = asyncio.create_task(engine.call("spin", 2))
    while not work.done():
        before = time.monotonic()
        await asyncio.sleep(0.01)
        lag = max(lag, time.monotonic() - before - 0.01)
    await work
    assert lag < 0.5


WORKER = """
import asyncio
from tests.unit.test_engine_process import Target
from worker_node.engines.process import EngineProcess

async def main():
    engine = EngineProcess("test-engine", Target)
    async def started(_value):
        print(engine.pid, flush=True)
    await engine.call("spin", 60, partial=started)

asyncio.run(main())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the kernel's parent-death signal is Linux's")
async def test_a_killed_worker_takes_its_engine_process_with_it() -> None:
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WORKER, stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).resolve().parents[2]
    )
    assert worker.stdout is not None
    child = int(await asyncio.wait_for(worker.stdout.readline(), 30))
    assert alive(child)
    worker.kill()
    await worker.wait()
    for _ in range(50):
        if not alive(child):
            break
        await asyncio.sleep(0.1)
    assert not alive(child)


async def test_close_stops_the_process(engine: EngineProcess) -> None:
    await engine.call("count", 0)
    pid = engine.pid
    assert pid is not None
    await engine.close()
    assert not alive(pid) and engine.pid is None
