"""Browser tests: Debian's Chromium, driven by Playwright, against one `tessera up` per module.

The browser is the system's (`chromium`, installed by the README's test line); Playwright's own
browser download is never used. A missing browser fails these tests: it does not skip them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, async_playwright

from tests.tessera_up import REPO, Up, tessera_up, wait_for_banner

# Screenshots go to a temporary folder, and to docs/web when TESSERA_SCREENSHOTS names it
# (`TESSERA_SCREENSHOTS=docs/web pytest tests/browser` refreshes the README's pictures).
SCREENSHOTS = os.environ.get("TESSERA_SCREENSHOTS")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "the browser tests need Debian's chromium: apt-get install chromium (the README's test line does)"
    return found


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    with tessera_up(tmp_path_factory.mktemp("up")) as running:
        banner = wait_for_banner(running)
        assert f"Website  {running.url}/" in banner  # the address a person opens is printed
        assert httpx.get(f"{running.url}/readyz", timeout=10).status_code == 200
        yield running


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Where each screenshot goes."""
    return [tmp_path_factory.mktemp("screenshots"), *([REPO / SCREENSHOTS] if SCREENSHOTS else [])]


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()
