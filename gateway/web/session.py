"""The website's cookies and forms: the session cookie, CSRF tokens, and rendering a page.

Every form carries a CSRF token in a hidden field: the session's own once logged in; before that,
the value of a `tessera_csrf` cookie the page set (double submit). The pages' scripts send the
session's token in `X-CSRF-Token` when they call the API.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from gateway.deps import SESSION_COOKIE, Services, session_of
from gateway.errors import Problem
from gateway.web.accounts import Session

PRE_SESSION_COOKIE = "tessera_csrf"
# What a page may load and run: its own scripts, styles, images and media only, and no framing.
# Inline style attributes stay allowed (the quota bar's widths); inline scripts do not.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; media-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; "
    "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")  # autoescapes .html


def secure(services: Services, request: Request) -> bool:
    """Whether cookies get `Secure`: as configured, else when the request came over https."""
    configured = services.settings.cookie_secure
    return configured if configured is not None else request.url.scheme == "https"


def set_session_cookie(response: Response, services: Services, request: Request, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(services.settings.session_ttl_s),
        httponly=True,
        samesite="lax",  # sent on a link followed from elsewhere, never on another site's form post
        secure=secure(services, request),
        path="/",
    )


def clear_session_cookie(response: Response, services: Services, request: Request) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=secure(services, request))


class Page:
    """One request to a page: its session (if logged in) and its CSRF token."""

    def __init__(self, services: Services, request: Request, session: Session | None) -> None:
        self.services = services
        self.request = request
        self.session = session
        self._new_pre_session: str | None = None

    @classmethod
    async def of(cls, services: Services, request: Request) -> Page:
        return cls(services, request, await session_of(services, request))

    @property
    def csrf_token(self) -> str:
        if self.session is not None:
            return self.session.csrf_token
        existing = self.request.cookies.get(PRE_SESSION_COOKIE)
        if existing:
            return existing
        if self._new_pre_session is None:
            self._new_pre_session = secrets.token_urlsafe(24)
        return self._new_pre_session

    async def form(self) -> dict[str, str]:
        """The posted form's text fields, once its CSRF token is checked (403 CSRF_TOKEN_INVALID)."""
        form = await self.request.form()
        fields = {name: value for name, value in form.items() if isinstance(value, str)}
        expected = self.session.csrf_token if self.session else self.request.cookies.get(PRE_SESSION_COOKIE)
        if not expected or not secrets.compare_digest(fields.get("csrf_token", ""), expected):
            raise Problem(403, "CSRF_TOKEN_INVALID", "the form is stale or did not come from this site; reload it")
        return fields

    def render(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        response = templates.TemplateResponse(
            self.request,
            template,
            {"session": self.session, "csrf_token": self.csrf_token, **context},
            status_code=status_code,
        )
        if self._new_pre_session is not None:
            response.set_cookie(
                PRE_SESSION_COOKIE,
                self._new_pre_session,
                httponly=True,
                samesite="strict",
                secure=secure(self.services, self.request),
                path="/",
            )
        response.headers.update(PAGE_HEADERS)
        return response
