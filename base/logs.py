"""Logging for every process: plain lines for a terminal, or one JSON object per line when
`TESSERA_LOG_FORMAT=json` (for a log collector).

A line about a job carries its id: code that works on one job sets `job_id` (a context variable,
so each asyncio task has its own) with `about_job`, or passes `extra={"job_id": ...}`; the JSON
lines then have a `job_id` field, and the plain ones end with `job=<id>`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
from datetime import UTC, datetime

job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("tessera_job_id", default=None)

PLAIN_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s%(job_suffix)s"


def about_job(value: object) -> None:
    """Say that what this task logs from now on is about job `value` (None: no job)."""
    job_id.set(None if value is None else str(value))


class JobIdFilter(logging.Filter):
    """Gives every record a `job_id` (from `extra`, else the task's context, else None)."""

    def filter(self, record: logging.LogRecord) -> bool:
        value = getattr(record, "job_id", None) or job_id.get()
        record.job_id = None if value is None else str(value)
        record.job_suffix = f" job={value}" if value else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, job_id, and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        value = getattr(record, "job_id", None)
        if value:
            line["job_id"] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(*, verbose: bool = False, fmt: str | None = None) -> None:
    """Set up the root logger for a `tessera` process: JSON when `fmt` (or TESSERA_LOG_FORMAT) is
    `json`, plain lines otherwise."""
    fmt = fmt or os.environ.get("TESSERA_LOG_FORMAT", "plain")
    handler = logging.StreamHandler()
    handler.addFilter(JobIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(PLAIN_FORMAT))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
