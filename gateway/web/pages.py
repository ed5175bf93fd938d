"""The website's pages: sign up, log in, generate, history, a job, usage, account (docs/web.md).

Pages are rendered here from the same read models and folds as the API; what changes something
goes through the same functions as the API's routes (the scheduler decides, events record it).
The generate page's script talks to the API itself, with the session cookie and its CSRF token.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from events.job import JobStatus
from gateway.auth import Principal
from gateway.decisions import carried_out
from gateway.deps import Services, ServicesDep
from gateway.errors import Problem
from gateway.inputs import utc_time
from gateway.routes import keys as key_routes
from gateway.routes.jobs import base_url, load_own_job, parse_job_id, position_and_estimate
from gateway.routes.users import me
from gateway.views import event_view, job_view
from gateway.web import accounts
from gateway.web.session import Page, clear_session_cookie, set_session_cookie
from projector import queries
from streams import subjects as s
from streams.messages import RegisterUser, RevokeKey

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)

CAPABILITIES = ("image", "video", "text", "tts", "stt")
PAGE_SIZE = 24


def _principal(page: Page) -> Principal:
    assert page.session is not None
    return Principal(user_id=page.session.user_id, frontend="web", bot_id=None, user_ref=page.session.user_ref)


def _to_login(request: Request) -> RedirectResponse:
    return RedirectResponse(f"/login?next={request.url.path}", status_code=303)


def _next_page(raw: str | None) -> str:
    """Where to go after logging in: a path on this site only (no open redirect)."""
    if raw and raw.startswith("/") and not raw.startswith("//") and "\\" not in raw:
        return raw
    return "/generate"


async def _logged_in(services: Services, request: Request, token: str, target: str) -> Response:
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(response, services, request, token)
    return response


async def _register(services: Services, email: str) -> None:
    """The account's user, registered by the scheduler (a repeat changes nothing). When the
    scheduler cannot say so now, the person is logged in all the same: the next login registers
    them, and so does their first job (a frontend's first submit for someone registers them)."""
    command = RegisterUser(command_id=uuid.uuid4(), platform="web", platform_user_id=email)
    try:
        await carried_out(services, s.CMD_USER_REGISTER, command, msg_id=f"user-register:{command.command_id}")
    except Problem as exc:
        log.warning("web: %s not registered yet (%s: %s)", email, exc.code, exc.detail)


@router.get("/", response_class=HTMLResponse)
async def home(services: ServicesDep, request: Request) -> Response:
    page = await Page.of(services, request)
    if page.session is not None:
        return RedirectResponse("/generate", status_code=303)
    return page.render("index.html")


@router.get("/signup", response_class=HTMLResponse)
async def signup_form(services: ServicesDep, request: Request) -> Response:
    return (await Page.of(services, request)).render("signup.html", email="")


@router.post("/signup", response_class=HTMLResponse)
async def signup(services: ServicesDep, request: Request) -> Response:
    page = await Page.of(services, request)
    form = await page.form()
    try:
        async with services.pool.acquire() as conn:
            user_id, email = await accounts.create(
                conn,
                form.get("email", ""),
                form.get("password", ""),
                request.client.host if request.client else "unknown",
                services.settings.signups_per_hour,
            )
            await _register(services, email)
            token = await accounts.open_session(conn, user_id, services.settings.session_ttl_s)
    except accounts.AccountError as exc:
        status = {"EMAIL_TAKEN": 409, "SIGNUP_THROTTLED": 429}.get(exc.code, 422)
        response = page.render("signup.html", status, error=exc.detail, code=exc.code, email=form.get("email", ""))
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response
    return await _logged_in(services, request, token, "/generate")


@router.get("/login", response_class=HTMLResponse)
async def login_form(services: ServicesDep, request: Request, next: str | None = None) -> Response:
    return (await Page.of(services, request)).render("login.html", email="", next=_next_page(next))


@router.post("/login", response_class=HTMLResponse)
async def login(services: ServicesDep, request: Request) -> Response:
    page = await Page.of(services, request)
    form = await page.form()
    target = _next_page(form.get("next"))
    client = request.client.host if request.client else "unknown"
    try:
        async with services.pool.acquire() as conn:
            user_id, email = await accounts.authenticate(conn, form.get("email", ""), form.get("password", ""), client)
            if await queries.user(conn, user_id) is None:  # signed up while the scheduler was away
                await _register(services, email)
            token = await accounts.open_session(conn, user_id, services.settings.session_ttl_s)
    except accounts.AccountError as exc:
        status = 429 if exc.code == "LOGIN_THROTTLED" else 401
        response = page.render(
            "login.html", status, error=exc.detail, code=exc.code, email=form.get("email", ""), next=target
        )
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response
    return await _logged_in(services, request, token, target)


@router.post("/logout")
async def logout(services: ServicesDep, request: Request) -> Response:
    page = await Page.of(services, request)
    await page.form()
    token = request.cookies.get("tessera_session")
    if token:
        async with services.pool.acquire() as conn:
            await accounts.close_session(conn, token)
    response = RedirectResponse("/", status_code=303)
    clear_session_cookie(response, services, request)
    return response


@router.get("/generate", response_class=HTMLResponse)
async def generate(services: ServicesDep, request: Request) -> Response:
    page = await Page.of(services, request)
    if page.session is None:
        return _to_login(request)
    return page.render("generate.html", capabilities=CAPABILITIES)


@router.get("/jobs", response_class=HTMLResponse)
async def history(
    services: ServicesDep,
    request: Request,
    capability: Annotated[str | None, Query()] = None,
    status: Annotated[str | None, Query()] = None,
    before: Annotated[datetime | None, Query()] = None,
) -> Response:
    page = await Page.of(services, request)
    if page.session is None:
        return _to_login(request)
    capability = capability if capability in CAPABILITIES else None
    status = status if status in {s.value for s in JobStatus} else None
    async with services.pool.acquire() as conn:
        rows = await queries.jobs_of(
            conn, page.session.user_id, PAGE_SIZE, utc_time(before, "before"), status, capability
        )
    more = rows[-1]["created_at"].isoformat() if len(rows) == PAGE_SIZE else None
    return page.render(
        "jobs.html",
        jobs=rows,
        capability=capability,
        status=status,
        capabilities=CAPABILITIES,
        statuses=[s.value for s in JobStatus],
        more=more,
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(job_id: str, services: ServicesDep, request: Request) -> Response:
    page = await Page.of(services, request)
    if page.session is None:
        return _to_login(request)
    job, records = await load_own_job(services, parse_job_id(job_id), page.session.user_id)
    position, estimate = await position_and_estimate(services, job, records)
    view = job_view(job, records, base_url(request, services), position, estimate, services.links)
    return page.render("job.html", job=view, timeline=[event_view(r) for r in records])


@router.get("/usage", response_class=HTMLResponse)
async def usage(services: ServicesDep, request: Request) -> Response:
    page = await Page.of(services, request)
    if page.session is None:
        return _to_login(request)
    mine = await me(services, _principal(page))
    async with services.pool.acquire() as conn:
        plans = await queries.plans(conn)
    return page.render("usage.html", me=mine, plans=plans, bar=_bar(mine["today"], mine["limits"]["daily_tokens"]))


def _bar(today: dict[str, Any], limit: float | None) -> dict[str, float]:
    """The quota bar's shares in percent: used, held by unfinished jobs, left."""
    if not limit:
        return {"used": 0.0, "reserved": 0.0, "left": 100.0}
    used = min(100.0, 100 * today["tokens_used"] / limit)
    reserved = min(100.0 - used, 100 * today["tokens_reserved"] / limit)
    return {"used": round(used, 1), "reserved": round(reserved, 1), "left": round(100 - used - reserved, 1)}


async def _account(page: Page, status_code: int = 200, **extra: Any) -> Response:
    assert page.session is not None
    async with page.services.pool.acquire() as conn:
        keys = await queries.keys_of(conn, page.session.user_id)
    return page.render("account.html", status_code, keys=keys, **extra)


@router.get("/account", response_class=HTMLResponse)
async def account(services: ServicesDep, request: Request) -> Response:
    page = await Page.of(services, request)
    if page.session is None:
        return _to_login(request)
    return await _account(page)


@router.post("/account/keys", response_class=HTMLResponse)
async def create_key(services: ServicesDep, request: Request) -> Response:
    page = await Page.of(services, request)
    if page.session is None:
        return _to_login(request)
    form = await page.form()
    label = form.get("label", "").strip()[:100] or None
    try:
        new = await key_routes.issue(services, page.session.user_id, label, None)
    except Problem as exc:
        return await _account(page, exc.status, error=exc.detail)
    return await _account(page, 201, new_key=new)


@router.post("/account/keys/{key_id}/revoke", response_class=HTMLResponse)
async def revoke_key(key_id: str, services: ServicesDep, request: Request) -> Response:
    page = await Page.of(services, request)
    if page.session is None:
        return _to_login(request)
    await page.form()
    parsed = key_routes.parse_key_id(key_id)
    command = RevokeKey(command_id=uuid.uuid4(), key_id=parsed, user_id=page.session.user_id, by="user")
    try:
        await carried_out(services, s.CMD_KEY_REVOKE, command, msg_id=f"key-revoke:{command.command_id}")
    except Problem as exc:
        return await _account(page, exc.status, error=exc.detail)
    services.key_revoked(parsed)
    return RedirectResponse("/account", status_code=303)
