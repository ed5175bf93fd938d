"""The OpenAPI document as a contract a fuzzer holds the gateway to (docs/api.md).

FastAPI writes most of the document from the routes; this module says what it cannot know:
every error is application/problem+json (`Problem`), also FastAPI's own 422; which errors an
operation can give, derived from what it takes (a key, an id in its path, a JSON body) plus those
its route declares with `problems(...)`; ids are UUIDs even where a route parses them itself (to
answer its own 400 code); and the submit and quote bodies say exactly what the server accepts,
from the catalog (capabilities, models, the numbers each model takes), so that no request valid by
the document is refused as invalid and no invalid one is accepted.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from base.catalog import CAPABILITY_ALIASES, Catalog
from base.config import Settings
from gateway.schemas import ProblemBody

PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
STORABLE_REF = {"$ref": "#/components/schemas/StorableValue"}
SECURED: list[dict[str, list[str]]] = [{"HTTPBearer": []}, {"APIKeyCookie": []}]
UUID_PARAMETERS = ("job_id", "artifact_id", "key_id", "upload_id", "webhook_id")

_STATUS_CODES = {
    400: "MALFORMED_JSON, INVALID_<ID> (an id that is not a UUID), INVALID_LAST_EVENT_ID",
    401: "UNAUTHENTICATED, INVALID_API_KEY, SESSION_EXPIRED, UNKNOWN_USER",
    403: "CSRF_TOKEN_INVALID, USER_REF_NOT_ALLOWED, and the operation's own refusals",
    404: "the thing named does not exist (or is not yours)",
    409: "a conflict with the current state",
    410: "gone: it expired",
    413: "BODY_TOO_LARGE, UPLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR (with `errors`), USER_REF_REQUIRED, INVALID_USER_REF, and the operation's own codes",
    429: "RATE_LIMITED, QUOTA_EXCEEDED, TOO_MANY_QUEUED_JOBS, UPLOAD_QUOTA_EXCEEDED; see Retry-After",
    503: "SCHEDULER_UNAVAILABLE (no decision in time; retrying is safe), NO_CAPABLE_WORKER; see Retry-After",
}

_INT = {"type": ["integer", "null"]}
_NUMBER = {"type": ["number", "null"]}
RATE_HEADERS = {
    "RateLimit-Limit": {"description": "Requests the plan allows per window", "schema": {"type": "integer"}},
    "RateLimit-Remaining": {"description": "Requests left in this window", "schema": {"type": "integer"}},
    "RateLimit-Reset": {"description": "Seconds until the window resets", "schema": {"type": "integer"}},
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}}


def problems(*statuses: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status answered as a Problem. `described` gives a status's
    codes (`_404="JOB_NOT_FOUND"`); 429 and 503 carry Retry-After (429 the rate headers too)."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        response = _problem(status, described.get(f"_{status}"))
        if status == 429:
            response["headers"] = {**RATE_HEADERS, **RETRY_AFTER}
        elif status == 503:
            response["headers"] = dict(RETRY_AFTER)
        responses[status] = response
    return responses


def _problem(status: int, codes: str | None = None) -> dict[str, Any]:
    return {
        "description": codes or _STATUS_CODES.get(status, "error"),
        "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}},
    }


class TesseraAPI(FastAPI):
    """FastAPI, with its OpenAPI document completed as the module docstring says."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings

    def openapi(self) -> dict[str, Any]:
        if not self.openapi_schema:
            document = get_openapi(
                title=self.title,
                version=self.version,
                openapi_version=self.openapi_version,
                description=self.description,
                routes=self.routes,
            )
            complete(document, self.settings, Catalog.load(self.settings.catalog_file))
            self.openapi_schema = document
        return self.openapi_schema


def complete(document: dict[str, Any], settings: Settings, catalog: Catalog) -> None:
    """Finish the document FastAPI wrote (see the module docstring)."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Problem"] = {**ProblemBody.model_json_schema(), "title": "Problem"}
    schemas["StorableValue"] = _storable()
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            _complete_operation(path, method, operation)
    _tighten(schemas, document["paths"], settings, catalog)
    _link_jobs(document["paths"])


def _link_jobs(paths: dict[str, Any]) -> None:
    """OpenAPI links from a submitted job to what can be done with it (client generators and the
    fuzzer's stateful phase follow them)."""
    links = {}
    for path, item in paths.items():
        if path.startswith("/api/v1/jobs/{job_id}"):
            for method, operation in item.items():
                links[f"{method.upper()} {path}"] = {
                    "operationId": operation["operationId"],
                    "parameters": {"job_id": "$response.body#/job_id"},
                }
    paths["/api/v1/jobs"]["post"]["responses"]["202"]["links"] = links


def _complete_operation(path: str, method: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    parameters = [p for p in operation.get("parameters", []) if p["name"].lower() != "authorization"]
    for parameter in parameters:
        parameter["schema"] = _not_null(parameter.get("schema", {}))
        if parameter["in"] == "path" and parameter["name"] in UUID_PARAMETERS:
            parameter["schema"] = {"type": "string", "format": "uuid", "title": parameter["schema"].get("title", "")}
            # webhooks answer an id that is not a UUID as one that does not exist
            responses.setdefault("404" if "webhook" in path else "400", _problem(404 if "webhook" in path else 400))
    if "parameters" in operation:
        operation["parameters"] = parameters
    if operation.get("security"):
        for status in (401, 403, 422):
            responses.setdefault(str(status), _problem(status))
    body = operation.get("requestBody", {}).get("content", {})
    if "application/json" in body:
        for status in (400, 413, 422):
            responses.setdefault(str(status), _problem(status))
    elif body:
        responses.setdefault("413", _problem(413))
    if parameters or body:
        responses.setdefault("422", _problem(422))
    if "422" in responses:  # FastAPI's own is declared as application/json; it is sent as a Problem
        responses["422"] = {**responses["422"], "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}}}
        if responses["422"].get("description") == "Validation Error":
            responses["422"]["description"] = _STATUS_CODES[422]


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without FastAPI's `null` option (`str | None`): a header or a query
    parameter is absent or a string, never null (a client would send the text "null")."""
    options = [o for o in schema.get("anyOf", []) if o.get("type") != "null"]
    if len(options) != 1 or len(schema["anyOf"]) != 2:
        return schema
    return {**{k: v for k, v in schema.items() if k != "anyOf"}, **options[0]}


def _storable() -> dict[str, Any]:
    """Any JSON value the event log can store: no NUL character in a string or a key."""
    text = {"type": "string", "pattern": "^[^\\u0000]*$"}
    return {
        "anyOf": [
            text,
            {"type": ["number", "boolean", "null"]},
            {"type": "array", "items": STORABLE_REF},
            {"type": "object", "propertyNames": text, "additionalProperties": STORABLE_REF},
        ]
    }


_NO_NUL = "^[^\\u0000]*$"
_TOKEN = "^[A-Za-z0-9_-]+$"
# An https URL with a host name (an address literal may be a private one, which is refused).
WEBHOOK_URL = "^https://[A-Za-z][A-Za-z0-9-]*(\\.[A-Za-z0-9-]+)*(:[1-9][0-9]{0,3})?(/[!-~]*)?$"
_SIZE = {"type": ["integer", "null"], "minimum": 64, "maximum": 16384}
_STEPS = {"steps": {**_INT, "minimum": 1, "maximum": 150}, "cfg": {**_NUMBER, "minimum": 0, "maximum": 30}}
_PICTURE = {
    "width": _SIZE,
    "height": _SIZE,
    "seed": {**_INT, "minimum": 0, "maximum": 2**63 - 1},
    "resolution": {"type": "string", "pattern": "^[1-9][0-9]{2,3}x[1-9][0-9]{2,3}$", "description": "'1024x1024'"},
    **_STEPS,
}
# The numbers each capability's models take (base.pricing checks them), beside prompt and model.
CAPABILITY_PARAMS: dict[str, dict[str, Any]] = {
    "image": {**_PICTURE, "batch_size": {**_INT, "minimum": 1, "maximum": 4}},
    "video": {**_PICTURE, "duration_seconds": {**_NUMBER, "minimum": 0.5, "maximum": 60}},
    "text": {"max_tokens": {**_INT, "minimum": 1, "maximum": 32768}},
    "echo": {"delay_seconds": {**_NUMBER, "minimum": 0, "maximum": 60}},
    "tts": {},
    "stt": {},
}
_BOTH_MODELS = {"required": ["model"], "properties": {"params": {"required": ["model"]}}}
_BOTH_SIZES = {"anyOf": [{"required": ["resolution", "width"]}, {"required": ["resolution", "height"]}]}


def request_variants(catalog: Catalog, max_prompt: int | None) -> list[dict[str, Any]]:
    """One schema per capability: its names, its models, the params it takes (unknown ones are kept
    and passed to the engine). A submit (`max_prompt` set) needs a prompt, and speech-to-text
    `params.input_upload` instead; a quote needs neither."""
    prompt: dict[str, Any] = STORABLE_REF
    if max_prompt is not None:
        prompt = {"type": "string", "minLength": 1, "maxLength": max_prompt, "pattern": "^[^\\u0000]*\\S[^\\u0000]*$"}
    variants = []
    for capability, numbers in CAPABILITY_PARAMS.items():
        names = [capability, *(alias for alias, name in CAPABILITY_ALIASES.items() if name == capability)]
        models = {"type": ["string", "null"], "enum": [*(m.name for m in catalog if m.capability == capability), None]}
        params: dict[str, Any] = {
            "type": "object",
            "properties": {
                "prompt": prompt,
                "model": models,
                "input_upload": {"type": "string", "format": "uuid", "description": "an upload's id"},
                "input": False,  # set by the platform from input_upload
                **numbers,
            },
            "propertyNames": {"pattern": _NO_NUL},
            "additionalProperties": STORABLE_REF,
        }
        if max_prompt is not None:
            params["required"] = ["input_upload" if capability == "stt" else "prompt"]
        if "resolution" in numbers:
            params["not"] = _BOTH_SIZES
        variants.append(
            {
                "title": capability,
                "properties": {"capability": {"enum": names}, "params": params, "model": models},
                "not": _BOTH_MODELS,
            }
        )
    return variants


def _tighten(schemas: dict[str, Any], paths: dict[str, Any], settings: Settings, catalog: Catalog) -> None:
    """What the routes check beyond their pydantic models, declared."""
    no_nul = {"pattern": _NO_NUL}
    for name in ("WebhookCreate", "WebhookUpdate"):
        url = schemas[name]["properties"]["url"]
        for option in url.get("anyOf", [url]):
            if option.get("type") == "string":
                option["pattern"] = WEBHOOK_URL
        description = schemas[name]["properties"]["description"]
        for option in description.get("anyOf", [description]):
            if option.get("type") == "string":
                option.update(no_nul)
    label = schemas["KeyCreate"]["properties"]["label"]
    for option in label.get("anyOf", [label]):
        if option.get("type") == "string":
            option.update(no_nul)
    submit = paths["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    submit["schema"] = _job_body(settings, catalog)
    quote = paths["/api/v1/quote"]["post"]["requestBody"]["content"]["application/json"]
    quote["schema"] = {
        "type": "object",
        "required": ["capability"],
        "properties": {
            "capability": {"type": "string", "maxLength": 20},
            "params": {"type": "object"},
            "model": {"type": ["string", "null"], "maxLength": 100},
        },
        "oneOf": request_variants(catalog, None),
    }


def _job_body(settings: Settings, catalog: Catalog) -> dict[str, Any]:
    nullable_token = {"type": ["string", "null"], "pattern": _TOKEN}
    return {
        "title": "JobCreate",
        "type": "object",
        "required": ["capability", "params"],
        "description": "A job request: one of the shapes below, by capability (docs/api.md)",
        "properties": {
            "capability": {"type": "string", "maxLength": 20},
            "params": {"type": "object"},
            "model": {"type": ["string", "null"], "maxLength": 100},
            "frontend": {**nullable_token, "maxLength": 20},
            "bot_id": {**nullable_token, "maxLength": 64},
            "user_ref": {"type": ["string", "null"], "maxLength": 120, "pattern": _NO_NUL},
            "reply_context": {
                "type": ["object", "null"],
                "propertyNames": {"pattern": _NO_NUL},
                "additionalProperties": STORABLE_REF,
            },
            "webhook": {"type": ["string", "null"], "maxLength": 2000, "pattern": WEBHOOK_URL},
            "webhook_events_filter": {
                "type": ["array", "null"],
                "maxItems": 3,
                "items": {"enum": ["start", "progress", "completed"]},
            },
        },
        "oneOf": request_variants(catalog, settings.max_prompt_chars),
    }
