"""TESSERA_LOG_FORMAT=json: one JSON object per line, and a line about a job carries its id,
whether set for the task (`about_job`) or passed with the record (`extra`)."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from base import logs


def test_json_lines_carry_the_job_id_of_the_task_that_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_LOG_FORMAT", "json")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure()
        stream = io.StringIO()
        handler = root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
        log = logging.getLogger("tessera.test")

        async def job(job_id: str) -> None:
            logs.about_job(job_id)
            await asyncio.sleep(0)
            log.info("running %s", "it")

        async def both() -> None:
            await asyncio.gather(job("job-a"), job("job-b"))

        asyncio.run(both())
        log.warning("no job here")
        log.info("passed along", extra={"job_id": "job-c"})
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    assert sorted(line.get("job_id") for line in lines[:2]) == ["job-a", "job-b"]
    assert lines[0]["message"] == "running it" and lines[0]["logger"] == "tessera.test" and lines[0]["time"]
    assert "job_id" not in lines[2] and lines[2]["level"] == "WARNING"
    assert lines[3]["job_id"] == "job-c"
