"""Checks on what a client sends that no schema says: values the event log cannot hold.

PostgreSQL's jsonb refuses a NUL character (and a lone UTF-16 surrogate) in any string or key,
and JSON has no NaN or infinity (msgspec would write them as null, silently changing the
request). Such a request is refused here with 422 and a code that names the place, before it
becomes a command; the scheduler also sets aside any command it cannot store (issue 11).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from gateway.errors import Problem

MAX_DEPTH = 32  # nesting of objects and arrays in params and reply_context


def check_storable(value: Any, where: str, depth: int = 0) -> None:
    """Raise a 422 Problem for the first part of `value` the event log could not store as given."""
    if depth > MAX_DEPTH:
        raise Problem(422, "TOO_DEEP", f"{where} is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, str):
        _check_text(value, where)
    elif isinstance(value, bool) or value is None or isinstance(value, int):
        return
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise Problem(422, "INVALID_NUMBER", f"{where} is not a finite number")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(str(key), f"{where} (a key)")
            check_storable(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_storable(item, f"{where}[{index}]", depth + 1)


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        raise Problem(422, "INVALID_CHARACTER", f"{where} contains a NUL character (U+0000), which cannot be stored")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Problem(422, "INVALID_CHARACTER", f"{where} contains a lone surrogate, which is not valid text") from None


_ISO_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?([Zz]|[+-][0-9]{2}:[0-9]{2})?)?"
)


def query_time(raw: str | None, name: str) -> datetime | None:
    """A query's date and time (RFC 3339; without an offset it is UTC), in UTC. Only that spelling:
    pydantic would also read a number as Unix seconds, which the OpenAPI document does not say."""
    if raw is None:
        return None
    try:
        if not _ISO_TIME.fullmatch(raw):
            raise ValueError(raw)
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise Problem(
            422,
            "VALIDATION_ERROR",
            f"{name} must be a date and time such as 2030-01-31T12:00:00Z",
            errors=[{"field": f"query.{name}", "message": "not an RFC 3339 date-time"}],
        ) from None
    return utc_time(value, name)


def utc_time(value: datetime | None, name: str) -> datetime | None:
    """A query's time in UTC; 422 for one that has no UTC equivalent (year 1 east of Greenwich)."""
    if value is None:
        return None
    try:
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except (OverflowError, ValueError):
        raise Problem(422, "INVALID_TIME", f"{name} is outside the range of times Tessera can compare") from None
