"""Browser tests: Debian's Chromium, driven by Playwright, against one `tessera up` per module.

The browser is the system's (`chromium`, installed by the README's test line); Playwright's own
browser download is never used. A missing browser fails these tests: it does not skip them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, async_playwright

from tessera.embedded import free_port

REPO = Path(__file__).resolve().parents[2]
# Screenshots go to a temporary folder, and to docs/web when TESSERA_SCREENSHOTS names it
# (`TESSERA_SCREENSHOTS=docs/web pytest tests/browser` refreshes the README's pictures).
SCREENSHOTS = os.environ.get("TESSERA_SCREENSHOTS")


@dataclass
class Up:
    url: str
    log: Path
    process: subprocess.Popen[str]
    shots: Path

    def screenshot_paths(self, name: str) -> list[Path]:
        paths = [self.shots / f"{name}.png"]
        if SCREENSHOTS:
            paths.append(REPO / SCREENSHOTS / f"{name}.png")
        return paths


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "the browser tests need Debian's chromium: apt-get install chromium (the README's test line does)"
    return found


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    tmp = tmp_path_factory.mktemp("up")
    port = free_port(None)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env.update(TESSERA_DATA_DIR=str(tmp / "data"), PYTHONUNBUFFERED="1")
    log = tmp / "up.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tessera.cli", "up", "--port", str(port)],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1800):
            if "Tessera is up." in log.read_text():
                break
            assert process.poll() is None, log.read_text()[-5000:]
            time.sleep(0.1)
        else:
            raise AssertionError(f"tessera up did not come up: {log.read_text()[-5000:]}")
        assert f"Website  {url}/" in log.read_text()  # the address a person opens is printed
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
        shots = tmp / "screenshots"
        shots.mkdir()
        yield Up(url=url, log=log, process=process, shots=shots)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()
