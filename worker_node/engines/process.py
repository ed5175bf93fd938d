"""A child process for an engine's CPU-heavy code, so that it never stalls the worker's event loop.

C extensions such as PocketSphinx hold the GIL while they compute. Run in a thread, they stop
the worker's event loop, and with it the heartbeats, progress and cancels: a long decode once got
its worker declared lost. An `EngineProcess` runs that code in a Python process of its own. It is
started on the first call and kept between calls, so a model or decoder loads once. Calls run one
at a time. A call that is abandoned (a cancelled job, a timeout, a failed progress report) stops
the process, SIGTERM then SIGKILL, so the engine is free for real and not just its slot; the next
call starts a fresh process.

The child is a new interpreter (`python -m worker_node.engines.process`), not a fork of the
worker: a fork would copy the worker's asyncio loop and NATS connection mid-flight. Parent and
child exchange length-prefixed pickle frames over the child's stdin and stdout, and the child
moves its stdout to stderr first, so that what a C library prints cannot corrupt a frame.

The child holds one *target*, built by a picklable factory (a class, or a `functools.partial` of
one). A call names one of the target's methods, which receives the call's arguments and an `emit`
function for partial results (a token, a progress fraction): each becomes a `partial` call back
in the parent while the call runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import struct
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

from worker_node.engines.base import EngineError

Emit = Callable[[Any], None]
PartialFn = Callable[[Any], Awaitable[None]]

_HEADER = struct.Struct("!Q")
_PR_SET_PDEATHSIG = 1
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # where `worker_node` is, for the child's imports


def _frame(value: object) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


class EngineProcess:
    """One child process that holds an engine's target, started when first needed.

    Args:
        name: for messages and the child's errors ("pocketsphinx", "llama.cpp").
        factory: builds the target in the child, on its first call; must pickle.
        stop_grace_s: how long a process may take to end on SIGTERM (or, at `close`, on the
            end of its input) before it is killed.
    """

    def __init__(self, name: str, factory: Callable[[], object], *, stop_grace_s: float = 1.0) -> None:
        self.name = name
        self._factory = factory
        self._stop_grace_s = stop_grace_s
        self._lock = asyncio.Lock()
        self._process: asyncio.subprocess.Process | None = None
        self._stopping: set[asyncio.Task[None]] = set()

    @property
    def pid(self) -> int | None:
        """The running child's process id; None before the first call and after a stop."""
        return self._process.pid if self._process is not None else None

    async def call(self, method: str, *args: object, partial: PartialFn | None = None) -> Any:
        """`target.method(*args, emit=...)` in the child; its partial results go to `partial`.

        Raises:
            EngineError: the target raised one (same code), raised another exception
                (`ENGINE_ERROR`), or the process died (`ENGINE_DISCONNECTED`).
        """
        async with self._lock:  # one call at a time: the target is not shared
            process = self._process or await self._start()
            answered = False
            try:
                await self._send(process, (method, args))
                while True:
                    kind, *rest = await self._receive(process)
                    if kind == "partial":
                        if partial is not None:
                            await partial(rest[0])
                        continue
                    answered = True
                    if kind == "result":
                        return rest[0]
                    raise EngineError(rest[0], rest[1])
            finally:
                if not answered:  # abandoned mid-call: the child may still be computing
                    await self._stop_shielded(process)

    async def close(self) -> None:
        """Stop the child: it ends at the end of its input, or is killed after the grace period."""
        if self._process is not None:
            await self._stop_shielded(self._process, gently=True)
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)

    async def _start(self) -> asyncio.subprocess.Process:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        try:
            # A session of its own: a Ctrl-C or a SIGTERM to the worker's process group reaches the
            # worker alone, which drains its jobs and then closes this process, rather than the
            # signal killing the job under it.
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                __name__,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise EngineError("ENGINE_UNAVAILABLE", f"{self.name}'s process could not start: {exc}") from exc
        self._process = process
        try:
            await self._send(process, (self.name, self._factory))
        except BaseException:
            await self._stop_shielded(process)
            raise
        return process

    async def _send(self, process: asyncio.subprocess.Process, value: object) -> None:
        assert process.stdin is not None
        try:
            process.stdin.write(_frame(value))
            await process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise await self._disconnected(process) from None

    async def _receive(self, process: asyncio.subprocess.Process) -> tuple[Any, ...]:
        assert process.stdout is not None
        try:
            (size,) = _HEADER.unpack(await process.stdout.readexactly(_HEADER.size))
            message: tuple[Any, ...] = pickle.loads(await process.stdout.readexactly(size))
        except asyncio.IncompleteReadError:
            raise await self._disconnected(process) from None
        return message

    async def _disconnected(self, process: asyncio.subprocess.Process) -> EngineError:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), self._stop_grace_s)
        return EngineError(
            "ENGINE_DISCONNECTED", f"{self.name}'s process ended unexpectedly (exit status {process.returncode})"
        )

    async def _stop_shielded(self, process: asyncio.subprocess.Process, *, gently: bool = False) -> None:
        """Stop `process`, even when the caller is cancelled again meanwhile; the next call starts another."""
        if self._process is process:
            self._process = None
        task = asyncio.create_task(self._stop(process, gently), name=f"{self.name}-stop-{process.pid}")
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        await asyncio.shield(task)

    async def _stop(self, process: asyncio.subprocess.Process, gently: bool) -> None:
        if process.returncode is None:
            if gently:
                assert process.stdin is not None
                process.stdin.close()  # the child ends when its input does
            else:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
            try:
                await asyncio.wait_for(process.wait(), self._stop_grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()


# --- the child's side -------------------------------------------------------------------------


def _read(stream: IO[bytes]) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None  # the parent closed our input: time to go
    (size,) = _HEADER.unpack(header)
    return pickle.loads(stream.read(size))


def _write(stream: IO[bytes], value: object) -> None:
    stream.write(_frame(value))
    stream.flush()


def _answer(target: object, method: str, args: tuple[Any, ...], emit: Emit, name: str) -> bytes:
    """The frame that answers one call: its result, or the error it raised."""
    try:
        return _frame(("result", getattr(target, method)(*args, emit=emit)))
    except EngineError as exc:
        return _frame(("error", exc.code, exc.message))
    except Exception as exc:  # a failure in the engine's code, or a result that does not pickle
        return _frame(("error", "ENGINE_ERROR", f"{name}: {type(exc).__name__}: {exc}"))


def _build(factory: Callable[[], object], name: str) -> tuple[object | None, tuple[str, str] | None]:
    try:
        return factory(), None
    except EngineError as exc:
        return None, (exc.code, exc.message)
    except Exception as exc:
        return None, ("ENGINE_UNAVAILABLE", f"{name}: {type(exc).__name__}: {exc}")


def _die_with_parent() -> None:
    """Have the kernel kill this process when the worker dies, even in the middle of a computation.

    Linux only; elsewhere the process ends when it next reads or writes a frame. Strictly, the
    signal comes when the worker's thread that started the process ends: its event loop's.
    """
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def serve() -> None:
    """The child's loop: build the target on the first call, answer calls until the input ends."""
    _die_with_parent()
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # C libraries' prints go to stderr, not into frames
    requests = sys.stdin.buffer
    opening = _read(requests)
    if opening is None:
        return
    name, factory = opening
    target: object | None = None

    def emit(value: object) -> None:
        _write(channel, ("partial", value))

    while (request := _read(requests)) is not None:
        method, args = request
        if target is None:
            target, failure = _build(factory, name)
            if failure is not None:
                _write(channel, ("error", *failure))
                continue
        channel.write(_answer(target, method, args, emit, name))
        channel.flush()


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):  # the worker went away: so do we
        serve()
