"""A person on the website, in Chromium: sign up, make speech, an image, a transcript and a text
answer while watching them live, cancel a queued job, reload mid-job, read the history and a job's
timeline, see the quota move, and never see another person's jobs."""

from __future__ import annotations

import importlib.util
import io
import re
import uuid
import wave
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.tessera_up import Up

pytestmark = pytest.mark.timeout(420)

LIVE_S = 60_000  # ms a job may take to show its result


async def shoot(shots: list[Path], page: Page, name: str) -> None:
    for folder in shots:
        folder.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


async def signed_up(browser: Browser, up: Up, shots: list[Path] | None = None) -> tuple[BrowserContext, Page, str]:
    context = await browser.new_context(base_url=up.url, viewport={"width": 1100, "height": 900})
    page = await context.new_page()
    await page.goto("/")
    if shots:
        await shoot(shots, page, "home")
    await page.get_by_role("link", name="Sign up free").click()
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill("a long password")
    if shots:
        await shoot(shots, page, "signup")
    await page.get_by_role("button", name="Sign up").click()
    await expect(page).to_have_url(f"{up.url}/generate")
    await expect(page.locator("#live-state")).to_contain_text("Live")
    return context, page, email


async def open_tab(page: Page, name: str) -> None:
    await page.get_by_role("tab", name=name).click()
    await expect(page.locator("#model option:checked")).not_to_have_count(0)
    await expect(page.locator("#cost")).not_to_be_empty()


async def api(page: Page, method: str, path: str, body: object | None = None) -> dict:
    """A call to the API from the page, as its script makes them (session cookie, CSRF header)."""
    return await page.evaluate(
        """async ([method, path, body]) => {
            const csrf = document.querySelector('meta[name="csrf-token"]').content;
            const r = await fetch(path, {method, headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
                                         body: body === null ? undefined : JSON.stringify(body)});
            return {status: r.status, body: await r.json()};
        }""",
        [method, path, body],
    )


def newest_card(page: Page):  # type: ignore[no-untyped-def]
    return page.locator("#cards article.card").first


async def test_speech_image_transcript_and_text_live(browser: Browser, up: Up, shots: list[Path]) -> None:
    context, page, _ = await signed_up(browser, up, shots)

    # Speech: the audio element loads and has a duration.
    await open_tab(page, "Speech")
    await page.get_by_label("Prompt").fill("Hello from Tessera. The quick brown fox jumps over the lazy dog.")
    await expect(page.locator("#cost")).to_contain_text("tokens")
    await page.get_by_role("button", name="Generate").click()
    card = newest_card(page)
    audio = card.locator("audio")
    await expect(audio).to_have_count(1, timeout=LIVE_S)
    await expect(card.get_by_role("status")).to_have_text("Done")
    await expect(card.get_by_role("button", name="Cancel")).to_be_hidden()  # nothing left to cancel
    duration = await audio.evaluate(
        """a => new Promise(done => a.readyState >= 1 ? done(a.duration)
            : a.addEventListener('loadedmetadata', () => done(a.duration)))"""
    )
    assert duration > 1.0
    spoken = await page.request.get(await audio.get_attribute("src") or "")
    wav = await spoken.body()
    assert wav.startswith(b"RIFF")

    # A diagnostic image, shown in place.
    await open_tab(page, "Image")
    await page.get_by_label("Prompt").fill("a lighthouse at dusk <script>alert(1)</script>")
    await page.get_by_label("Size").select_option("512x512")
    await page.get_by_role("button", name="Generate").click()
    card = newest_card(page)
    image = card.locator("img.result")
    await expect(image).to_have_count(1, timeout=LIVE_S)
    assert (
        await image.evaluate("i => i.complete ? i.naturalWidth : new Promise(d => i.onload = () => d(i.naturalWidth))")
        == 512
    )
    await expect(card.locator(".prompt")).to_have_text("a lighthouse at dusk <script>alert(1)</script>")  # as text

    # A short (diagnostic) video: an animated WebP, shown as a picture that moves.
    await open_tab(page, "Video")
    await page.get_by_label("Prompt").fill("waves on a beach")
    await page.get_by_label("Size").select_option("512x512")
    await page.get_by_label("Length in seconds").fill("1")
    await page.get_by_role("button", name="Generate").click()
    card = newest_card(page)
    animation = card.locator("img.result")
    await expect(animation).to_have_count(1, timeout=LIVE_S)
    await expect(animation).to_have_attribute("alt", re.compile("^Animation made for: waves"))
    assert (
        await animation.evaluate(
            "i => i.complete ? i.naturalWidth : new Promise(d => i.onload = () => d(i.naturalWidth))"
        )
        == 512
    )

    # A transcript of an uploaded recording: the speech just made (a 16-bit WAV).
    await open_tab(page, "Transcription")
    await page.get_by_label("Recording (WAV)").set_input_files(
        files=[{"name": "hello.wav", "mimeType": "audio/wav", "buffer": _sixteen_bit(wav)}]
    )
    await page.get_by_role("button", name="Generate").click()
    card = newest_card(page)
    transcript = card.locator("pre.result")
    await expect(transcript).to_have_count(1, timeout=LIVE_S)
    heard = (await transcript.inner_text()).lower().split()
    assert len({"hello", "quick", "brown", "fox", "jumps", "lazy", "dog"} & set(heard)) >= 3, heard

    # A text answer streamed as it is written, when the offline LLM is installed (the test extra has it).
    if importlib.util.find_spec("llama_cpp"):
        await open_tab(page, "Text")
        await page.get_by_label("Prompt").fill("Write three sentences about lighthouses.")
        await page.get_by_label("Longest answer (tokens)").fill("120")
        await page.get_by_role("button", name="Generate").click()
        card = newest_card(page)
        partial = card.locator("pre.partial")
        await expect(partial).to_be_visible(timeout=LIVE_S)  # streaming: shown before the job ends
        assert await card.get_by_role("status").inner_text() != "Done" or await partial.inner_text()
        await expect(card.locator("pre.result")).to_have_count(1, timeout=LIVE_S * 2)
        assert len(await card.locator("pre.result").inner_text()) > 20
    await shoot(shots, page, "generate")
    await context.close()


def _sixteen_bit(wav: bytes) -> bytes:
    with wave.open(io.BytesIO(wav)) as check:
        assert check.getsampwidth() == 2 and check.getnchannels() == 1
    return wav


async def test_queue_position_cancel_reload_history_timeline_and_quota(
    browser: Browser, up: Up, shots: list[Path]
) -> None:
    context, page, _ = await signed_up(browser, up)
    await page.goto("/usage")
    left_before = float(await page.locator("#tokens-left").inner_text())
    await page.goto("/generate")
    await expect(page.locator("#live-state")).to_contain_text("Live")

    # Three slow jobs: the free plan runs one at a time, so the others wait in line.
    ids = []
    for n in range(3):
        answer = await api(
            page, "POST", "/api/v1/jobs", {"capability": "echo", "params": {"prompt": f"slow {n}", "delay_seconds": 6}}
        )
        assert answer["status"] == 202, answer
        ids.append(answer["body"]["job_id"])
    last = page.locator(f"#job-{ids[2]}")
    await expect(last.get_by_role("status")).to_contain_text("Queued", timeout=10_000)
    await expect(last.get_by_role("status")).to_contain_text("1 ahead", timeout=10_000)
    await expect(last.get_by_role("status")).to_contain_text("next in line", timeout=20_000)  # the line moved
    await last.get_by_role("button", name="Cancel").click()
    await expect(last.get_by_role("status")).to_have_text("Cancelled", timeout=10_000)

    # Reload while the second runs: its card comes back and finishes.
    second = page.locator(f"#job-{ids[1]}")
    await page.reload()
    await expect(second.get_by_role("status")).to_have_text("Done", timeout=LIVE_S)
    await expect(second.locator("pre.result")).to_have_text("slow 1")

    # History lists them, with filters; a job's page shows its timeline.
    await page.goto("/jobs?status=CANCELLED")
    await expect(page.locator("tbody tr")).to_have_count(1)
    await page.goto("/jobs")
    await expect(page.locator("tbody tr")).to_have_count(3)
    await shoot(shots, page, "history")
    await page.locator(f'tr[data-job-id="{ids[0]}"] a').click()
    timeline = page.locator("ol.timeline li")
    await expect(timeline.first).to_contain_text("JobSubmitted")
    await expect(timeline.last).to_contain_text("JobCompleted")
    await shoot(shots, page, "job")

    # The quota bar moves by what a completed job cost (echo jobs are free; speech is not).
    await page.goto("/generate")
    speech = await api(page, "POST", "/api/v1/jobs", {"capability": "tts", "params": {"prompt": "Counted. " * 40}})
    assert speech["status"] == 202, speech
    await expect(page.locator(f"#job-{speech['body']['job_id']}").get_by_role("status")).to_have_text(
        "Done", timeout=LIVE_S
    )
    await page.goto("/usage")
    left_after = float(await page.locator("#tokens-left").inner_text())
    assert left_after == pytest.approx(left_before - speech["body"]["cost_tokens"], abs=0.011), (
        left_before,
        left_after,
    )
    await shoot(shots, page, "usage")
    await page.goto("/account")
    await page.get_by_label("Name").fill("my script")
    await page.get_by_role("button", name="Create a key").click()
    await expect(page.locator("#new-key")).to_contain_text("tsk_")
    await shoot(shots, page, "account")

    # Someone else sees none of it.
    other, stranger, _ = await signed_up(browser, up)
    await stranger.goto("/jobs")
    await expect(stranger.locator("tbody tr")).to_have_count(0)
    await expect(stranger.get_by_text("No jobs yet")).to_be_visible()
    response = await stranger.goto(f"/jobs/{ids[0]}")
    assert response is not None and response.status == 404
    await stranger.goto("/generate")
    await expect(stranger.locator("#cards article")).to_have_count(0)
    await other.close()
    await context.close()


async def test_pages_work_on_a_phone_and_with_the_keyboard(browser: Browser, up: Up, shots: list[Path]) -> None:
    context = await browser.new_context(base_url=up.url, viewport={"width": 390, "height": 844}, is_mobile=True)
    page = await context.new_page()
    await page.goto("/login")
    await shoot(shots, page, "login-phone")
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    await page.keyboard.press("Tab")
    focused = await page.evaluate("document.activeElement.textContent")
    assert "Skip to content" in focused
    for field in ("Email", "Password"):
        assert await page.get_by_label(field).count() == 1  # every input has a label
    await context.close()


async def test_a_refusal_is_said_in_words(browser: Browser, up: Up) -> None:
    context, page, _ = await signed_up(browser, up)
    # The free plan holds at most 3 jobs waiting, 6 submits a minute.
    await open_tab(page, "Speech")
    await page.get_by_label("Prompt").fill("Again and again.")
    refusal = page.locator("#refusal")
    for _ in range(8):
        await page.get_by_role("button", name="Generate").click()
        await expect(page.get_by_role("button", name="Generate")).to_be_enabled()
        if await refusal.is_visible():
            break
    await expect(refusal).to_be_visible()
    assert re.search(r"(at most|per minute|Try again in \d+ s)", await refusal.inner_text()), await refusal.inner_text()
    await context.close()
