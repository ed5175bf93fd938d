"""The website over HTTP: accounts, cookies, CSRF, throttling, expiry, escaping, isolation, and the
user-wide event stream (the browser tests in tests/browser drive the same pages in Chromium)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from starlette.requests import Request

from gateway.client import TesseraClient
from gateway.schemas import TransitionEvent
from gateway.web import accounts
from gateway.web.session import secure
from tests import conftest
from tests.conftest import Platform

pytestmark = pytest.mark.timeout(90)

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _csrf(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page has no CSRF field"
    return found[1]


@pytest.fixture
async def platform(platform: Platform) -> AsyncIterator[Platform]:
    """The platform, whose `client()`s are closed after the test."""
    opened: list[httpx.AsyncClient] = []
    make = platform.client

    def client(key: str | None = None, **headers: str) -> httpx.AsyncClient:
        opened.append(make(key, **headers))
        return opened[-1]

    platform.client = client  # type: ignore[method-assign]
    yield platform
    platform.client = make  # type: ignore[method-assign]
    for c in opened:
        await c.aclose()


async def signup(platform: Platform, email: str | None = None, password: str = "correct horse") -> httpx.AsyncClient:
    """A browser-like client, signed up and logged in."""
    client = platform.client()
    form = await client.get("/signup")
    email = email or f"{uuid.uuid4().hex[:8]}@example.com"
    answer = await client.post("/signup", data={"email": email, "password": password, "csrf_token": _csrf(form.text)})
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/generate"
    return client


async def page_csrf(client: httpx.AsyncClient) -> str:
    return _csrf((await client.get("/account")).text)


async def test_signup_sets_a_session_cookie_with_safe_flags(platform: Platform) -> None:
    client = platform.client()
    form = await client.get("/signup")
    answer = await client.post(
        "/signup", data={"email": "Ada@Example.com", "password": "correct horse", "csrf_token": _csrf(form.text)}
    )
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("tessera_session=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http on localhost; see the https case below
    me = (await client.get("/api/v1/user/me")).json()
    assert me["platform"] == "web" and me["platform_user_id"] == "ada@example.com"
    assert me["registered"] is True and me["plan"]["tier"] == "free"
    other = platform.client()
    other.cookies.set("tessera_csrf", client.cookies["tessera_csrf"])
    again = await other.post(
        "/signup", data={"email": "ada@example.com", "password": "another one", "csrf_token": _csrf(form.text)}
    )
    assert again.status_code == 409 and 'data-code="EMAIL_TAKEN"' in again.text


def test_cookies_are_secure_behind_https() -> None:
    def request(scheme: str) -> Request:
        return Request({"type": "http", "scheme": scheme, "path": "/", "headers": [], "server": ("x", 443)})

    class Services:
        settings = conftest.test_settings()

    assert secure(Services(), request("https")) is True  # type: ignore[arg-type]
    assert secure(Services(), request("http")) is False  # type: ignore[arg-type]
    Services.settings = conftest.test_settings(cookie_secure=True)
    assert secure(Services(), request("http")) is True  # type: ignore[arg-type]


async def test_forms_and_api_calls_without_the_csrf_token_are_refused(platform: Platform) -> None:
    stranger = platform.client()
    refused = await stranger.post("/signup", data={"email": "eve@example.com", "password": "password123"})
    assert refused.status_code == 403 and refused.json()["code"] == "CSRF_TOKEN_INVALID"

    client = await signup(platform)
    job = {"capability": "echo", "params": {"prompt": "hi"}}
    forged = await client.post("/api/v1/jobs", json=job)
    assert forged.status_code == 403 and forged.json()["code"] == "CSRF_TOKEN_INVALID"
    wrong = await client.post("/api/v1/jobs", json=job, headers={"X-CSRF-Token": "not-it"})
    assert wrong.status_code == 403
    token = await page_csrf(client)
    accepted = await client.post("/api/v1/jobs", json=job, headers={"X-CSRF-Token": token})
    assert accepted.status_code == 202, accepted.text
    logout = await client.post("/logout", data={})
    assert logout.status_code == 403  # a form without the token does not even log out
    assert (await client.get("/api/v1/user/me")).status_code == 200


async def test_logins_are_throttled_after_repeated_failures(platform: Platform) -> None:
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    await signup(platform, email, "the right one")
    client = platform.client()
    token = _csrf((await client.get("/login")).text)
    for _ in range(accounts.FAILURES_PER_ACCOUNT):
        failed = await client.post("/login", data={"email": email, "password": "wrong guess", "csrf_token": token})
        assert failed.status_code == 401 and 'data-code="LOGIN_FAILED"' in failed.text
    blocked = await client.post("/login", data={"email": email, "password": "the right one", "csrf_token": token})
    assert blocked.status_code == 429 and 'data-code="LOGIN_THROTTLED"' in blocked.text
    assert int(blocked.headers["retry-after"]) > 0
    assert "tessera_session" not in client.cookies


@pytest.mark.settings(signups_per_hour=2)
async def test_one_client_may_make_only_so_many_accounts_an_hour(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[str] = []
    real_hash = accounts._hash

    async def counted_hash(password: str) -> str:
        hashed.append(password)
        return await real_hash(password)

    monkeypatch.setattr(accounts, "_hash", counted_hash)

    async def sign_up(email: str, password: str = "correct horse") -> httpx.Response:
        """A sign-up from a fresh browser on the same address (127.0.0.1)."""
        client = platform.client()
        token = _csrf((await client.get("/signup")).text)
        return await client.post("/signup", data={"email": email, "password": password, "csrf_token": token})

    first = await sign_up("one@example.com")
    assert first.status_code == 303
    refused = [
        await sign_up("not an email"),
        await sign_up("short@example.com", "short"),
        await sign_up("one@example.com"),
    ]
    assert [r.status_code for r in refused] == [422, 422, 409]  # refused sign-ups are not counted
    assert (await sign_up("two@example.com")).status_code == 303
    hashes = len(hashed)
    throttled = await sign_up("three@example.com")
    assert throttled.status_code == 429 and 'data-code="SIGNUP_THROTTLED"' in throttled.text
    assert len(hashed) == hashes  # refused before the password was hashed
    assert 3500 <= int(throttled.headers["retry-after"]) <= 3601 and "60 minutes" in throttled.text
    conn = await asyncpg.connect(platform.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM web_accounts WHERE email = 'three@example.com'") == 0
        await conn.execute("UPDATE web_signups SET at = at - interval '61 minutes'")  # an hour later
    finally:
        await conn.close()
    assert (await sign_up("three@example.com")).status_code == 303


async def test_a_session_expires_and_logout_ends_it(platform: Platform) -> None:
    client = await signup(platform)
    assert (await client.get("/api/v1/user/me")).status_code == 200
    conn = await asyncpg.connect(platform.database_url)
    try:
        await conn.execute("UPDATE web_sessions SET expires_at = now() - interval '1 second'")
    finally:
        await conn.close()
    expired = await client.get("/api/v1/user/me")
    assert expired.status_code == 401 and expired.json()["code"] == "SESSION_EXPIRED"
    page = await client.get("/generate")
    assert page.status_code == 303 and page.headers["location"].startswith("/login")

    other = await signup(platform)
    cookie = other.cookies["tessera_session"]
    await other.post("/logout", data={"csrf_token": await page_csrf(other)})
    thief = platform.client()
    thief.cookies.set("tessera_session", cookie)
    replay = await thief.get("/api/v1/user/me")
    assert replay.status_code == 401


async def test_a_script_in_a_prompt_renders_as_text_everywhere(platform: Platform) -> None:
    client = await signup(platform)
    token = await page_csrf(client)
    prompt = "<script>alert('x')</script><img src=x onerror=alert(1)>"
    job = await client.post(
        "/api/v1/jobs", json={"capability": "echo", "params": {"prompt": prompt}}, headers={"X-CSRF-Token": token}
    )
    job_id = job.json()["job_id"]
    await platform.wait_status(client, job_id, {"COMPLETED"})
    await asyncio.sleep(0.3)  # the history page reads the read model
    for path in ("/jobs", f"/jobs/{job_id}"):
        html = (await client.get(path)).text
        assert "&lt;script&gt;alert(" in html, path
        assert "<script>alert" not in html and "<img src=x" not in html, path


async def test_one_user_never_sees_another_users_jobs(platform: Platform) -> None:
    alice = await signup(platform)
    token = await page_csrf(alice)
    job_id = (
        await alice.post(
            "/api/v1/jobs",
            json={"capability": "echo", "params": {"prompt": "alice's secret", "delay_seconds": 2}},
            headers={"X-CSRF-Token": token},
        )
    ).json()["job_id"]
    bob = await signup(platform)
    assert (await bob.get(f"/jobs/{job_id}")).status_code == 404
    assert (await bob.get(f"/api/v1/jobs/{job_id}")).status_code == 404
    assert "alice's secret" not in (await bob.get("/jobs")).text
    async with bob.stream("GET", "/api/v1/events") as feed:
        first = await anext(feed.aiter_text())
    assert "following 0 jobs" in first


async def _read_feed(
    client: httpx.AsyncClient, headers: dict[str, str], until: int
) -> list[tuple[str | None, str, str]]:
    """(id, event, data) of the feed's events until `until` terminal transitions came."""
    seen: list[tuple[str | None, str, str]] = []
    done = 0
    async with client.stream("GET", "/api/v1/events", headers=headers) as feed:
        assert feed.headers["content-type"].startswith("text/event-stream")
        event_id, kind = None, ""
        async for line in feed.aiter_lines():
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                seen.append((event_id, kind, line[6:]))
                if kind == "transition" and any(s in line for s in ('"COMPLETED"', '"CANCELLED"', '"FAILED"')):
                    done += 1
                event_id = None
            if done >= until:
                return seen
    return seen


async def test_the_user_feed_follows_all_jobs_and_resumes_without_loss(platform: Platform) -> None:
    client = await signup(platform)
    token = {"X-CSRF-Token": await page_csrf(client)}
    first = (
        await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "one"}}, headers=token)
    ).json()["job_id"]
    seen = await _read_feed(client, {}, until=1)
    assert {e[2].count(first) > 0 for e in seen} == {True}
    cursor = next(e[0] for e in reversed(seen) if e[0])
    # Away: a job is submitted and finishes while no stream is open.
    second = (
        await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "two"}}, headers=token)
    ).json()["job_id"]
    await platform.wait_status(client, second, {"COMPLETED"})
    resumed = await _read_feed(client, {"Last-Event-ID": cursor}, until=1)
    transitions = [e for e in resumed if e[1] == "transition"]
    assert transitions and all(second in e[2] for e in transitions)  # the missed job, whole
    assert not any(first in e[2] for e in transitions)  # nothing sent twice
    bad = await client.get("/api/v1/events", headers={"Last-Event-ID": "nonsense"})
    assert bad.status_code == 400 and bad.json()["code"] == "INVALID_LAST_EVENT_ID"


async def test_the_account_page_makes_and_revokes_api_keys(platform: Platform) -> None:
    client = await signup(platform)
    token = await page_csrf(client)
    made = await client.post("/account/keys", data={"label": "script", "csrf_token": token})
    assert made.status_code == 201
    key = re.search(r'id="new-key" class="key">([^<]+)<', made.text)
    assert key
    api = platform.client(key[1])
    assert (await api.get("/api/v1/user/me")).json()["platform"] == "web"
    key_id = re.search(r'data-key-id="([^"]+)"', made.text)
    assert key_id
    assert key[1] not in (await client.get("/account")).text  # shown once
    revoked = await client.post(f"/account/keys/{key_id[1]}/revoke", data={"csrf_token": token})
    assert revoked.status_code == 303
    assert (await api.get("/api/v1/user/me")).status_code == 401


async def test_quote_prices_a_request_before_it_is_sent(platform: Platform) -> None:
    client = await signup(platform)
    token = {"X-CSRF-Token": await page_csrf(client)}
    quoted = await client.post(
        "/api/v1/quote", json={"capability": "tts", "params": {"prompt": "x" * 2000}}, headers=token
    )
    assert quoted.status_code == 200, quoted.text
    accepted = await client.post(
        "/api/v1/jobs", json={"capability": "tts", "params": {"prompt": "x" * 2000}}, headers=token
    )
    assert quoted.json()["cost_tokens"] == accepted.json()["cost_tokens"] > 0
    unknown = await client.post(
        "/api/v1/quote", json={"capability": "image", "params": {"model": "nope"}}, headers=token
    )
    assert unknown.status_code == 422 and unknown.json()["code"] == "UNKNOWN_MODEL"


def _cli(platform: Platform, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TESSERA_NATS_URL": platform.nats_url, "TESSERA_DATABASE_URL": platform.database_url}
    return subprocess.run(
        [sys.executable, "-m", "tessera.cli", *args], input=stdin, env=env, capture_output=True, text=True, timeout=60
    )


async def test_operators_reset_a_password_and_change_a_plan_from_the_cli(platform: Platform) -> None:
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    client = await signup(platform, email, "forgotten one")
    reset = await asyncio.to_thread(
        _cli, platform, "users", "reset-password", "--email", email, stdin="brand new pass\n"
    )
    assert reset.returncode == 0, reset.stderr
    assert (await client.get("/api/v1/user/me")).status_code == 401  # its sessions ended
    login = platform.client()
    token = _csrf((await login.get("/login")).text)
    old = await login.post("/login", data={"email": email, "password": "forgotten one", "csrf_token": token})
    assert old.status_code == 401
    new = await login.post("/login", data={"email": email, "password": "brand new pass", "csrf_token": token})
    assert new.status_code == 303

    moved = await asyncio.to_thread(
        _cli, platform, "users", "set-plan", "--platform", "web", "--user-id", email, "--plan", "pro"
    )
    assert moved.returncode == 0, moved.stderr
    usage = await login.get("/usage")
    assert re.search(r'id="plan-name">[^<]*Pro', usage.text, re.IGNORECASE), usage.text[:2000]
    unknown = await asyncio.to_thread(
        _cli, platform, "users", "reset-password", "--email", "nobody@example.com", stdin="whatever123\n"
    )
    assert unknown.returncode != 0 and "ACCOUNT_NOT_FOUND" in unknown.stderr


async def test_the_typed_client_follows_the_user_feed_with_an_api_key(platform: Platform) -> None:
    key = await platform.user_key()
    async with TesseraClient(platform.api_url, key) as client:
        accepted = await client.submit("echo", {"prompt": "feed me"})
        seen: list[tuple[str | None, object]] = []
        async for cursor, event in client.events():
            seen.append((cursor, event))
            if isinstance(event, TransitionEvent) and event.status == "COMPLETED":
                break
    transitions = [e for _, e in seen if isinstance(e, TransitionEvent)]
    assert {e.job_id for _, e in seen} == {accepted.job_id}
    assert [e.type for e in transitions][-1] == "JobCompleted.v1"
    assert all(c for c, e in seen if isinstance(e, TransitionEvent)) and not any(
        c for c, e in seen if not isinstance(e, TransitionEvent)
    )


async def test_a_forged_cursor_naming_another_users_job_reveals_nothing(platform: Platform) -> None:
    alice = await signup(platform)
    secret = (
        await alice.post(
            "/api/v1/jobs",
            json={"capability": "echo", "params": {"prompt": "alice's secret", "delay_seconds": 1}},
            headers={"X-CSRF-Token": await page_csrf(alice)},
        )
    ).json()["job_id"]
    bob = await signup(platform)
    mine = (
        await bob.post(
            "/api/v1/jobs",
            json={"capability": "echo", "params": {"prompt": "bob's own"}},
            headers={"X-CSRF-Token": await page_csrf(bob)},
        )
    ).json()["job_id"]
    seen = await _read_feed(bob, {"Last-Event-ID": f"0~{secret}.0"}, until=1)
    assert seen and all(mine in data for _, _, data in seen)
    assert not any(secret in data or "alice" in data for _, _, data in seen)


async def test_pages_forbid_inline_scripts_and_framing(platform: Platform) -> None:
    client = await signup(platform)
    for path in ("/", "/login", "/generate", "/jobs", "/usage", "/account"):
        page = await client.get(path, follow_redirects=True)
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy, path
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "<script>" not in page.text  # every script is a file the policy allows


async def test_a_resumed_feed_does_not_resend_a_finished_job_while_the_read_models_lag(platform: Platform) -> None:
    await platform.stop("projector")  # the read models stay behind the log for the whole test
    client = await signup(platform)
    token = {"X-CSRF-Token": await page_csrf(client)}
    first = (
        await client.post("/api/v1/jobs", json={"capability": "echo", "params": {"prompt": "one"}}, headers=token)
    ).json()["job_id"]
    seen = await _read_feed(client, {}, until=1)
    assert all(first in data for _, _, data in seen)
    second = (
        await client.post(
            "/api/v1/jobs",
            json={"capability": "echo", "params": {"prompt": "two", "delay_seconds": 1}},
            headers=token,
        )
    ).json()["job_id"]
    async with client.stream("GET", "/api/v1/events") as feed:  # the second job's first transition
        cursor = None
        async for line in feed.aiter_lines():
            if line.startswith("id: ") and first not in line:
                cursor = line[4:]
                break
    assert cursor and second in cursor and first not in cursor  # the first had ended: not in it
    resumed = await _read_feed(client, {"Last-Event-ID": cursor}, until=1)
    assert not any(first in data for _, _, data in resumed), "a finished job was sent again"
    assert any(second in data for _, _, data in resumed)
