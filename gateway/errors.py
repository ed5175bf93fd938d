"""RFC 9457 problem details with a stable machine `code` for every error the API returns."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An error answered as application/problem+json."""

    def __init__(
        self, status: int, code: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers
        self.extra = extra


_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def problem_response(
    status: int,
    code: str,
    detail: str,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "type": f"https://tessera.dev/problems/{code.lower().replace('_', '-')}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "code": code,
        "detail": detail,
        **extra,
    }
    if instance:
        body["instance"] = instance
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _template(path: str) -> re.Pattern[str]:
    """`/api/v1/jobs/{job_id}` as a pattern of the paths it stands for."""
    parts = re.split(r"(\{[^}]+\})", path)
    return re.compile("".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts))


def allowed_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document lists for the request's path (a literal path such as
    `/webhooks/job-secret` before a template that also matches it); none for a path it does not have."""
    paths: dict[str, Any] = request.app.openapi().get("paths", {})
    matching = [path for path in paths if _template(path).fullmatch(request.url.path)]
    templates = [path for path in matching if "{" not in path] or matching
    return sorted({method.upper() for template in templates for method in paths[template]})


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.code, exc.detail, request.url.path, exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return problem_response(400, "MALFORMED_JSON", "the request body is not valid JSON", request.url.path)
        fields = [
            {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "message": e.get("msg")}
            for e in errors
        ]
        missing_prompt = any(f["field"] == "params.prompt" for f in fields)
        code = "MISSING_PROMPT" if missing_prompt else "VALIDATION_ERROR"
        detail = "params.prompt is required" if missing_prompt else "the request does not match the schema"
        return problem_response(422, code, detail, request.url.path, errors=fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        headers = dict(exc.headers or {})
        documented = allowed_methods(request) if exc.status_code == 405 else []
        if documented:  # every method the path takes (RFC 9110), not only those of Starlette's first match
            headers["Allow"] = ", ".join(documented)
        return problem_response(exc.status_code, code, str(exc.detail), request.url.path, headers or None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(500, "INTERNAL_ERROR", "an unexpected error occurred", request.url.path)
