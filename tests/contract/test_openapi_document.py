"""The OpenAPI document's promises that need no running platform (docs/api.md); schemathesis
holds the live gateway to them in test_api_contract.py."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from base.config import Settings
from gateway.app import create_app

OPEN = {"/api/v1/models", "/api/v1/plans", "/healthz", "/readyz"}


@pytest.fixture(scope="module")
def app() -> FastAPI:
    return create_app(Settings(), nats_url="nats://127.0.0.1:1", database_url="postgresql://127.0.0.1:1/none")


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in document["paths"].items() for method, op in item.items()]


def test_every_error_is_a_declared_problem(app: FastAPI) -> None:
    document = app.openapi()
    assert "HTTPValidationError" not in str(document)
    problem = document["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "code", "detail"} <= set(problem["required"])
    for path, method, op in operations(document):
        for status, response in op["responses"].items():
            if status >= "400" and path != "/readyz":
                assert list(response["content"]) == ["application/problem+json"], (method, path, status)


def test_every_authenticated_operation_names_the_security_schemes_and_no_authorization_header(app: FastAPI) -> None:
    document = app.openapi()
    assert set(document["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyCookie"}
    for path, method, op in operations(document):
        assert all(p["name"].lower() != "authorization" for p in op.get("parameters", [])), (method, path)
        if path not in OPEN:
            assert {"HTTPBearer": []} in op["security"] and {"APIKeyCookie": []} in op["security"], (method, path)
            assert "401" in op["responses"], (method, path)


def test_ids_are_uuids_and_submit_declares_its_rate_headers(app: FastAPI) -> None:
    document = app.openapi()
    for path, method, op in operations(document):
        for parameter in op.get("parameters", []):
            if parameter["in"] == "path" and parameter["name"] != "message_id":
                assert parameter["schema"]["format"] == "uuid", (method, path, parameter["name"])
    submit = document["paths"]["/api/v1/jobs"]["post"]["responses"]
    assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(submit["202"]["headers"])
    assert "Retry-After" in submit["429"]["headers"] and "Retry-After" in submit["503"]["headers"]


def test_the_submit_body_requires_what_the_server_requires(app: FastAPI) -> None:
    body = app.openapi()["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    required = {v["title"]: v["properties"]["params"]["required"] for v in body["oneOf"]}
    assert required == {c: ["input_upload" if c == "stt" else "prompt"] for c in required}
    tts = next(v for v in body["oneOf"] if v["title"] == "tts")
    assert tts["properties"]["capability"]["enum"] == ["tts", "audio"]
    assert "piper-joe" in tts["properties"]["params"]["properties"]["model"]["enum"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/api/v1/jobs", "GET, POST"),
        ("PUT", "/api/v1/jobs/x", "DELETE, GET"),
        ("PATCH", "/api/v1/webhooks/job-secret", "GET"),  # not an endpoint id
        ("TRACE", "/api/v1/webhooks/job-secret", "GET"),
        ("TRACE", "/healthz", "GET"),
    ],
)
async def test_405_lists_every_method_of_the_path(app: FastAPI, method: str, path: str, allow: str) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        answer = await client.request(method, path)
    assert answer.status_code == 405 and answer.headers["allow"] == allow
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == "METHOD_NOT_ALLOWED"
