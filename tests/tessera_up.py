"""`tessera up` as a person runs it, in a subprocess with a data dir of its own: for the tests that
need the whole platform as the README starts it (the browser, the API contract, Prometheus)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tessera.embedded import free_port

REPO = Path(__file__).resolve().parents[1]
BANNER = "Tessera is up."


@dataclass
class Up:
    url: str  # the API's and the website's address
    env: dict[str, str]  # its environment: `tessera` commands run with it reach this platform
    log: Path
    process: subprocess.Popen[str]

    def cli(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """A `tessera` command against this platform."""
        return subprocess.run(
            [sys.executable, "-m", "tessera.cli", *args],
            input=stdin,
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )


@contextlib.contextmanager
def tessera_up(data: Path, wait: bool = True, **settings: str) -> Iterator[Up]:
    """`tessera up` on a free port, keeping its data and log under `data`, with `settings` as
    TESSERA_* variables (TESSERA_ prefix added); stopped with Ctrl-C's signal at the end. With
    `wait`, it returns once the banner says the platform is up."""
    data.mkdir(parents=True, exist_ok=True)
    port = free_port(None)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env.update({f"TESSERA_{name}": value for name, value in settings.items()})
    env.update(TESSERA_DATA_DIR=str(data / "data"), PYTHONUNBUFFERED="1")
    log = data / "up.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tessera.cli", "up", "--port", str(port)],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        up = Up(url=f"http://127.0.0.1:{port}", env=env, log=log, process=process)
        if wait:
            wait_for_banner(up)
        yield up
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def wait_for_banner(up: Up, timeout: float = 180.0) -> str:
    """The banner's text once `tessera up` printed it; fails with the log's end if it died first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = up.log.read_text()
        if BANNER in text:
            return text.split(BANNER, 1)[1]
        assert up.process.poll() is None, f"tessera up exited: {text[-5000:]}"
        time.sleep(0.1)
    raise AssertionError(f"tessera up did not come up: {up.log.read_text()[-5000:]}")
